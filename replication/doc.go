// Package replication ships a primary volume's write-ahead log to its
// replicas in steady state (DESIGN §5).
//
// It owns: the data-plane wire format (frame.go, message.go), the replica
// side listener that serves every replicated volume of one server,
// multiplexed by volume name (Server), the client side of one replication
// connection (Conn), the per-volume primary that runs one shipping cursor
// per member (Primary), the durability modes (sync, quorum, async) and
// the blockdev.Device wrapper whose Flush and FUA writes wait for the
// mode's commit (Volume).
//
// Other traffic on the same port (route.go): Server.Route(preface, h) hands
// every accepted connection that starts with preface (a fixed string whose
// first byte is no frame type) to h.ServeConn, after reading the preface
// under a deadline. The Server still owns such connections: Close closes
// them and waits for their handlers. A connection with an unknown preface
// is closed. Recovery (package v2bridge) is routed this way; this package
// does not import it.
//
// Epoch rule: every request carries the sender's epoch. A replica accepts a
// request only if that epoch equals the epoch its volume was last unfenced
// or fenced with (Status().Epoch). A lower epoch is refused with
// ErrStaleEpoch (the sender is an old primary); a higher one is refused
// with ErrEpochAhead: the master assigns epochs, so a replica must be
// assigned (Unfence(epoch, RoleReplica, lease)) before it follows a primary
// of that epoch, never the other way round.
//
// Divergence at hello (headterm.go, Primary.checkHead): a hello may ask
// for the epoch of the replica's head record (a trailing flag; an older
// replica refuses it and is greeted again without), and the answer then
// carries it from the replica's durable term history with a known flag
// (a trailing field; an answer without it is "unknown"). Before a cursor
// streams to a member it checks, in order: the replica's durable and head
// are not beyond the primary's head; if the replica's head epoch is known
// and the primary's history positively shows another epoch at that LSN
// (its TermAt differs, or the LSN is older than its oldest kept term,
// whose epoch is below the replica's), the member holds records this
// primary never had; then the takeover check (Takeover). Any failure
// makes the member StateNeedsRebuild: nothing is shipped to it and it is
// reported to RemoveMember. Equal epochs do not skip the takeover check
// (a primary restarted in the same epoch may have rewritten LSNs it lost).
//
// Commit path (per FLUSH): the flush ships what the cursor has not and
// the barrier in one socket write when the cursor is idle; the replica
// applies what arrived with the barrier without acking it separately
// (the barrier-ack covers it) and answers the barrier on its reader when
// nothing else is buffered (an fsync behind more input goes to a second
// goroutine so applying continues). A member's reports count only from a
// connection whose hello position the cursor accepted.
//
// It must never: import upstream SeaweedFS or anything under weed/, import
// another weedblock package except blockvol and blockdev, renumber a record
// (replicas keep the primary's LSN and epoch), acknowledge a FLUSH before
// the mode's commit, buffer an unbounded amount per replica, let a dead
// replica wedge the primary's WAL (holds have a byte budget), or panic on
// bytes from the network.
package replication
