// Package nbd is a Network Block Device server (fixed newstyle handshake) that
// serves blockdev.Device values as named exports.
//
// It owns: the NBD wire format (handshake, options, requests, simple and
// structured replies), the export registry (exports come and go at runtime as
// volumes do), the per-connection pipeline (a fixed set of workers that take
// turns reading the next request, then call the device, so requests run
// concurrently and are answered in completion order under one writer lock;
// payload bytes in flight are bounded by a budget) and the mapping from
// blockdev errors to NBD errno values.
//
// It must never: panic or hang on bytes from the network (a malformed request
// gets an NBD error or a closed connection), buffer more than its in-flight
// byte budget per connection, acknowledge a FLUSH or FUA write before the
// device's Flush / fua write returned, or know what is behind a Device (engine,
// replication, SeaweedFS).
package nbd
