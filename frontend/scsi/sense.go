package scsi

import "fmt"

// Sense keys (SPC-4 table 54).
const (
	SenseNoSense        = 0x0
	SenseNotReady       = 0x2
	SenseMediumError    = 0x3
	SenseHardwareError  = 0x4
	SenseIllegalRequest = 0x5
	SenseUnitAttention  = 0x6
	SenseDataProtect    = 0x7
	SenseAbortedCommand = 0xB
	SenseMiscompare     = 0xE
)

// Condition is a CHECK CONDITION outcome: sense key, additional sense code
// and qualifier, and optionally the INFORMATION field. It is an error value so
// command handlers can return it up the stack.
type Condition struct {
	Key, ASC, ASCQ byte
	// Info is the INFORMATION field (VALID bit set) when HasInfo.
	Info    uint32
	HasInfo bool
}

func (c *Condition) Error() string {
	return fmt.Sprintf("scsi: check condition %x/%02x/%02x", c.Key, c.ASC, c.ASCQ)
}

// Sense returns the condition as 18 bytes of fixed-format sense data
// (response code 70h, current error).
func (c *Condition) Sense() []byte {
	s := make([]byte, 18)
	s[0] = 0x70
	if c.HasInfo {
		s[0] |= 0x80
		s[3] = byte(c.Info >> 24)
		s[4] = byte(c.Info >> 16)
		s[5] = byte(c.Info >> 8)
		s[6] = byte(c.Info)
	}
	s[2] = c.Key & 0x0f
	s[7] = 10 // additional sense length
	s[12] = c.ASC
	s[13] = c.ASCQ
	return s
}

func cond(key, asc, ascq byte) *Condition { return &Condition{Key: key, ASC: asc, ASCQ: ascq} }

// The conditions this logical unit reports. Each call returns a fresh value
// so callers may set Info.
func errInvalidOpcode() *Condition     { return cond(SenseIllegalRequest, 0x20, 0x00) }
func errInvalidFieldCDB() *Condition   { return cond(SenseIllegalRequest, 0x24, 0x00) }
func errLBAOutOfRange() *Condition     { return cond(SenseIllegalRequest, 0x21, 0x00) }
func errParamListLength() *Condition   { return cond(SenseIllegalRequest, 0x1A, 0x00) }
func errInvalidFieldParam() *Condition { return cond(SenseIllegalRequest, 0x26, 0x00) }
func errLUNotSupported() *Condition    { return cond(SenseIllegalRequest, 0x25, 0x00) }
func errSavingNotSupported() *Condition {
	return cond(SenseIllegalRequest, 0x39, 0x00)
}
func errInvalidRelease() *Condition { return cond(SenseIllegalRequest, 0x26, 0x04) }
func errWriteProtected() *Condition { return cond(SenseDataProtect, 0x27, 0x00) }
func errMediumRemovalPrevented() *Condition {
	return cond(SenseIllegalRequest, 0x53, 0x02)
}
func errUnrecoveredRead() *Condition { return cond(SenseMediumError, 0x11, 0x00) }
func errInternalTarget() *Condition  { return cond(SenseHardwareError, 0x44, 0x00) }

// errMiscompare reports a miscompare at byte offset off of the compared data.
func errMiscompare(off int) *Condition {
	c := cond(SenseMiscompare, 0x1D, 0x00)
	c.Info = uint32(off)
	c.HasInfo = true
	return c
}

// Unit attention conditions, as ASC<<8 | ASCQ.
const (
	uaPowerOn                ua = 0x2901
	uaBusReset               ua = 0x2902
	uaDeviceReset            ua = 0x2903
	uaModeChanged            ua = 0x2A01
	uaReservationsPreempted  ua = 0x2A03
	uaReservationsReleased   ua = 0x2A04
	uaRegistrationsPreempted ua = 0x2A05
	uaCapacityChanged        ua = 0x2A09
)

// ua is the ASC/ASCQ of a pending unit attention.
type ua uint16

func (u ua) condition() *Condition { return cond(SenseUnitAttention, byte(u>>8), byte(u)) }

// errDataShort: the initiator sent less data than the CDB asks for (iSCSI
// Expected Data Transfer Length below the SCSI transfer length). Nothing is
// written.
func errDataShort() *Condition { return cond(SenseIllegalRequest, 0x0E, 0x03) }
func errNotReady() *Condition  { return cond(SenseNotReady, 0x04, 0x00) }
func errWriteError() *Condition {
	return cond(SenseMediumError, 0x0C, 0x00)
}
