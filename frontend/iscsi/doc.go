// Package iscsi is an iSCSI target transport (RFC 7143): it accepts TCP
// connections, runs login (security and operational negotiation, CHAP),
// discovery (SendTargets) and the full-feature phase, and moves SCSI
// commands, data and status between initiators and logical units.
//
// It owns PDUs, sessions, connections, sequence numbers (CmdSN, StatSN,
// DataSN, R2TSN), data movement (immediate data, unsolicited Data-Out, R2T,
// Data-In splitting), task tags and task management. A command the logical
// unit calls quick (QuickChecker: a small READ) runs on the connection's
// reader, which adds its response to the write batch and flushes only when
// the next PDU is not already buffered (one writev for a burst of reads;
// a quick command that was slow makes the reader hand the next ones off).
// Every other command runs on its own goroutine, which writes its Data-In
// and status itself under the connection's write lock (the last writer in
// line flushes the batch with one writev, large payloads referenced, not
// copied). A DataInReleaser logical unit gets its buffer back once sent.
// It delegates every
// SCSI decision (CDB parsing, sense data, the block device) to a
// LogicalUnit (normally frontend/scsi).
//
// Usage:
//
//	srv := iscsi.NewServer(iscsi.Config{})
//	srv.AddTarget(iscsi.Target{Name: iscsi.IQN("vol1"), LU: lu})
//	go srv.Serve(listener)
//	...
//	srv.Close() // idempotent; waits for every connection and command
//
// It must never parse CDBs itself, never touch a block device directly,
// never panic or hang on bytes from the network (bad input closes the
// connection or is rejected), and never leave goroutines behind: Server.Close
// stops and waits for every goroutine it started.
package iscsi
