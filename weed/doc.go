// Command weed is the SeaweedFS binary with block-volume support: every
// upstream SeaweedFS subcommand (master, volume, filer, shell, version, ...)
// with upstream's flags and defaults, plus weedblock's own commands
// (`weed block serve`, see package blockcmd).
//
// The main package owns only process wiring: the command list, the global
// flag parse, the bridge from upstream's logging flags to
// github.com/golang/glog (package logbridge) and the exit status. It never
// implements storage or protocol logic itself, and it is the only place
// (with its sub-packages) allowed to import github.com/seaweedfs/seaweedfs.
package main
