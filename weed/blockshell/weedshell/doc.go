// Package weedshell hooks weedblock's block commands (package blockshell)
// into upstream SeaweedFS's `weed shell`: Install appends them to
// upstream's shell.Commands, and each command reaches the master the shell
// is connected to through the shell's master client, dialling its gRPC port
// with the shell's client TLS settings (security.toml, grpc.client).
//
// It owns only that adaptation and stays thin: every decision about flags,
// output and errors is blockshell's, where it is tested without upstream.
//
// It must never keep state of its own, take upstream's shell lock (the
// master serialises block changes itself), or print anything but what
// blockshell prints.
package weedshell
