// Package engine holds the recovery decisions for a returning replica, as
// pure state: the planner (primary view + replica report → a plan with its
// reason), attempt slots (at most one live recovery attempt per replica,
// with tokens that go stale on an epoch bump or endpoint change), the
// recovery log (bounded, per replica), and the replica state machine whose
// states derive only from attempt outcomes.
//
// Divergence: given both term histories (PrimaryView.Terms and
// ReplicaReport.Terms), the planner keeps a replica's records only up to
// the highest LSN at which both know the same epoch (log matching); an
// epoch either side does not know never matches, so doubt truncates or
// rebuilds, never keeps.
//
// Intervals of LSNs are written (a, b]: a plan that catches up "from a to b"
// ships the records a+1 .. b.
//
// It owns: the rules for ZeroGap / CatchUp / Truncate (+ catch-up) /
// Rebuild (Full or Snapshot), the identity of an attempt (replica ID =
// volume + server ID, epoch, endpoint, attempt number), and the meaning of
// an outcome.
//
// It must never: do I/O (files, sockets, clocks other than an injected
// one), start goroutines, import another weedblock package, identify a
// replica by its network address, or keep package-level mutable state.
package engine
