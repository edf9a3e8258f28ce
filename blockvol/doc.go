// Package blockvol is the local block-volume engine: one file holding a
// superblock (two copies), a circular write-ahead log and a flat extent.
//
// Writes are appended to the WAL (group-committed batches written with one
// pwritev each, packed: a batch starts where the last one ended, inside
// its last page) and acknowledged; an in-memory index maps every
// dirty LBA to its newest WAL location so reads see the newest data at once.
// Flush and FUA writes share one fdatasync, and any fdatasync of the file
// (the flusher's too) makes the records written before it durable. A background flusher copies WAL
// records into the extent in LSN order, fdatasyncs, persists the checkpoint
// in the superblock and only then frees WAL space. Retention holds keep WAL
// records readable for lagging replicas, within a byte budget after which
// the hold is revoked and its owner told. The page cache is kept in small
// folios (a small write into a large folio dirties all of it): the flusher
// writes the extent in page-sized pieces and drops the cached pages of WAL
// space it frees, and it paces the extent's write-back so a FLUSH's
// fdatasync never finds a whole round dirty (optional File methods
// CacheDropper, WritebackPacer: advice, never a durability point).
// Role and epoch are persisted; a
// volume opens fenced (read-only) until Unfence (Options.Standalone opens
// unfenced as primary of the persisted epoch, for a server without a
// master). A recovery after a crash applies the recovered log to the
// extent and restarts it with a new generation, so bytes of discarded
// records can never be chained back in; TruncateWAL does the same for a
// replica that must drop records beyond the committed point.
//
// A base snapshot (CreateSnapshot, snapshot.go) is an exact image of the
// volume at its checkpoint L, kept beside the volume file (<vol>.snap is an
// A/B manifest with the SHA-256, <vol>.snap.0/.1 the sparse images): the
// extent is copied while writes and the flusher go on (before the flusher
// changes a block the copier has not reached, the block's old content is
// copied into the image: copy-on-write), the image is fsynced before the
// manifest naming it, so a crash leaves the old snapshot or the new one.
// The snapshot holds the WAL after L within half the WAL. OpenSnapshot
// verifies the image against its manifest (OpenSnapshotStreaming leaves
// the digest to a caller that hashes what it reads); a snapshot that fails
// is untrusted and never read. It is a rebuild base while the WAL still
// holds (L, head] (SnapshotBase).
// BeginRebuild deletes it (stopping one being taken), Create deletes one
// left at the path by an earlier volume, and SnapshotFiles names the files
// to remove with a volume.
//
// The term history (Terms, TermAt, term.go) keeps the epoch of every
// record from the oldest of at most MaxTerms terms up to the head, also
// after the flusher frees the records: a term reaches the superblock with
// the checkpoint that covers its first record (before that the record's
// own WAL header carries it), TruncateWAL drops the terms beyond its
// point, BeginRebuild forgets the history and InstallBaseTerms takes the
// source's. Unknown is an answer (ok=false), never a guess.
//
// It owns: the on-disk format (superblock, WAL records, extent layout),
// recovery, the index, the flusher goroutine, holds, fencing state, the
// replica append path (ApplyReplicated, ScanWAL) and the base snapshot
// files.
//
// It must never: retry a failed fsync (a failed Sync makes the volume
// read-only for good), wait for write-back (PaceWriteback) outside syncMu
// or go on after it failed (the wait consumes the file's write-back error,
// which the next fdatasync would then not report), derive the recovered head from an LSN instead of the
// byte end of the last valid record, reuse WAL space before the superblock
// that releases it is durable, panic on bad bytes from disk, or import
// another weedblock package except the leaf blockdev.
package blockvol
