package nbd

import (
	"errors"

	"github.com/weedblock/weedblock/blockdev"
)

// errnoFor maps a device error to the NBD errno sent to the client. write
// says whether the command changes data: the protocol asks for ENOSPC rather
// than EINVAL when such a request reaches past the end of the export.
func errnoFor(err error, write bool) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, blockdev.ErrReadOnly):
		return errnoPerm
	case errors.Is(err, blockdev.ErrOutOfRange):
		if write {
			return errnoNoSpc
		}
		return errnoInval
	case errors.Is(err, blockdev.ErrUnaligned):
		return errnoInval
	case errors.Is(err, blockdev.ErrClosed):
		return errnoShutdown
	default:
		return errnoIO
	}
}
