package scsi

// The contract between an iSCSI (or other) transport and the SCSI logical
// unit. The transport owns PDUs, sessions, data movement and task tags; this
// package owns CDB parsing, the block device, sense data and per-LU state
// (reservations, unit attentions, mode pages).

// SAM status codes.
const (
	StatusGood                = 0x00
	StatusCheckCondition      = 0x02
	StatusConditionMet        = 0x04
	StatusBusy                = 0x08
	StatusReservationConflict = 0x18
	StatusTaskSetFull         = 0x28
	StatusTaskAborted         = 0x40
)

// Nexus names the I_T nexus a command arrived on. Persistent reservations
// and unit attentions are kept per nexus.
type Nexus struct {
	// InitiatorPort is the SCSI initiator port name, for iSCSI
	// "<InitiatorName>,i,0x<ISID hex>".
	InitiatorPort string
	// TargetPort is the SCSI target port name, for iSCSI
	// "<TargetName>,t,0x<TPGT hex>".
	TargetPort string
	// RelativeTargetPortID is the relative port identifier (≥ 1).
	RelativeTargetPortID uint16
}

// Command is one SCSI command as the transport delivers it.
type Command struct {
	Nexus Nexus
	// LUN is the logical unit number (decoded from the 8-byte LUN field:
	// peripheral or flat-space addressing gives 0..16383). A unit answers
	// commands for other LUNs as SPC-4 says for an absent logical unit.
	LUN uint64
	// CDB is the command descriptor block (6..16 bytes; longer with AHS).
	CDB []byte
	// DataOut is the data the initiator sent for this command, fully
	// gathered by the transport. Its length is what the initiator actually
	// sent (the iSCSI Expected Data Transfer Length for writes). When it
	// is shorter than the CDB's transfer length, writes store only the
	// whole blocks sent; LogicalUnit.DataOutLength gives the CDB's length
	// so the transport can report the residual.
	DataOut []byte
	// ExpectedInLength is the initiator's buffer size for data-in (the
	// Expected Data Transfer Length for reads); DataIn beyond it is cut by
	// the transport, which reports the residual.
	ExpectedInLength uint32
	// Read/Write are the direction bits the initiator set.
	Read, Write bool
}

// Response is the outcome of a command.
type Response struct {
	Status byte
	// Sense is fixed-format sense data; set with StatusCheckCondition.
	Sense []byte
	// DataIn is the data to return to the initiator (may be longer than
	// ExpectedInLength: the transport truncates and reports overflow).
	DataIn []byte
	// buf, when set, is the recycled buffer behind DataIn (READ); see
	// LogicalUnit.ReleaseDataIn.
	buf *[]byte
}
