// Package faultproxy is a TCP proxy for tests that injects network faults
// between a client and a server on loopback: delay, drop (refuse new
// connections), blackhole (stop forwarding but keep connections open) and
// cut (close every connection now).
//
// It owns: its listener, the proxied connections and their copy
// goroutines. It must never: be used outside tests and benchmarks, or keep
// a goroutine running after Close returns.
package faultproxy
