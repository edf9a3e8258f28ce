// Package scsi is a SCSI logical unit (SPC-4 / SBC-3 direct-access block
// device) over a blockdev.Device: it parses CDBs, moves data to and from the
// device, builds sense data and keeps per-LU state. It knows nothing of the
// transport that carries commands (see Command and Response).
//
// It owns:
//   - command decoding and validation, with fixed-format sense data for
//     every error (Condition);
//   - the data path: READ/WRITE 6/10/12/16, WRITE AND VERIFY, VERIFY,
//     WRITE SAME (UNMAP, NDOB), UNMAP, COMPARE AND WRITE (atomic against
//     overlapping writes through a range lock), SYNCHRONIZE CACHE,
//     PRE-FETCH, GET LBA STATUS, READ CAPACITY; READ data-in buffers are
//     recycled per unit (not zeroed: the device fills them) once the
//     transport hands them back through ReleaseDataIn; Quick tells a
//     transport which commands (READs up to 128 KiB) it may run without a
//     goroutine hand-off;
//   - identification: INQUIRY with VPD pages 00h, 80h, 83h, B0h, B1h, B2h,
//     REPORT LUNS, REPORT SUPPORTED OPERATION CODES and TASK MANAGEMENT
//     FUNCTIONS;
//   - per-unit state: unit attentions per I_T nexus, mode pages (caching,
//     control, informational exceptions), persistent reservations and
//     RESERVE(6)/RELEASE(6), PREVENT ALLOW MEDIUM REMOVAL.
//
// It must never: panic on a malformed CDB or parameter list; hold a state
// lock across device I/O (data I/O runs concurrently, only COMPARE AND WRITE
// excludes overlapping writes); claim a feature (in INQUIRY, VPD pages or
// REPORT SUPPORTED OPERATION CODES) it does not implement; know about PDUs,
// sessions or sockets.
package scsi
