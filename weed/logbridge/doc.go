// Package logbridge makes upstream SeaweedFS's logging flags govern
// github.com/golang/glog, the logger every weedblock package uses.
//
// The upstream binary parses -v, -vmodule, -logtostderr, -alsologtostderr,
// -stderrthreshold and -logdir into its own glog fork (registered on its own
// flag set, so the two loggers' flag registrations never collide).
// After that parse, Apply copies those settings onto golang/glog's flags,
// with one deliberate difference: golang/glog writes its files into the
// "weedblock" subdirectory of upstream's log directory (-logdir, or the
// system temp directory when unset), because both loggers would otherwise
// name their files identically (program.host.user.log.SEVERITY.time.pid)
// and clobber each other.
//
// It owns only that flag translation. It never logs through the upstream
// fork and never changes the upstream logger's settings.
package logbridge
