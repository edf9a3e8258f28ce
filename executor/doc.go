// Package executor runs one recovery plan (from engine) for one replica as
// a single loop: acquire pins (a WAL hold from the plan's From; the base for
// a rebuild), transfer in batches, and between batches check cancellation,
// the attempt token, the budgets (time, bytes, stall) and pin revocation,
// and call an optional OnStep hook (deterministic fault injection). Every
// pin is released exactly once on every exit path, then the attempt's slot.
// The result is an engine.Outcome; a replica's state derives only from it.
//
// The I/O is behind small interfaces (CatchUpIO, RebuildIO, TruncateIO)
// that v2bridge implements over blockvol and replication; every call
// carries the attempt token so the far side can refuse stale attempts too.
//
// It owns: the attempt loop, the budgets, the convergence checks (tail
// chasing, retention lost → NeedsRebuild) and the pin bookkeeping.
//
// It must never: open sockets or files, re-derive a plan's bound values
// (source, base LSN, target) from the primary's current history — it uses
// them or fails closed — start goroutines that outlive Run, perform a side
// effect with a stale token, or import a weedblock package other than
// engine.
package executor
