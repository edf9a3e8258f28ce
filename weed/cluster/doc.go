// Package cluster launches SeaweedFS servers with block support: it
// replaces the Run of upstream's `master`, `volume` and `server` commands
// (keeping their flag sets, names and defaults) with launchers that build
// upstream's servers through its exported constructors and register the
// block services on the same gRPC and HTTP ports. It also runs the local
// development cluster (`weed block dev`: one master and three volume
// servers as child processes of this binary).
//
// It owns process wiring only: listeners, gRPC servers, HTTP routes,
// upstream heartbeat observation (servers joining and leaving, with a
// silent-stream timeout), the topology snapshot and leadership adapters
// handed to the block master, metrics registration and the orderly stop
// through upstream's interrupt hooks.
//
// It never implements block logic (registry, placement, leases, volumes):
// that lives in weed/blockmaster and weed/blockvolume, which do not import
// upstream. It is the only place besides the weed main package that
// starts upstream servers.
package cluster
