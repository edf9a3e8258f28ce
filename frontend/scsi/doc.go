// Package scsi is a SCSI logical unit (SPC-4 / SBC-3 direct-access block
// device) over a blockdev.Device: it parses CDBs, moves data to and from the
// device, builds sense data and keeps per-LU state. It knows nothing of the
// transport that carries commands (see Command and Response).
package scsi
