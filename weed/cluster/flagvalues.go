package cluster

import (
	"fmt"
	"time"

	flag "github.com/seaweedfs/seaweedfs/weed/util/fla9"
)

// flagValues reads typed values out of an upstream command's flag set after
// it was parsed. Upstream keeps the option structs unexported, but every
// value is registered in the flag set, so the launcher reads them by name.
// The first missing or mistyped flag is kept in err (an upstream upgrade
// that renames a flag must fail loudly, not run with zero values).
type flagValues struct {
	fs  *flag.FlagSet
	err error
}

func (r *flagValues) get(name string) any {
	f := r.fs.Lookup(name)
	if f == nil {
		if r.err == nil {
			r.err = fmt.Errorf("flag -%s is not defined", name)
		}
		return nil
	}
	g, ok := f.Value.(flag.Getter)
	if !ok {
		if r.err == nil {
			r.err = fmt.Errorf("flag -%s has no typed value", name)
		}
		return nil
	}
	return g.Get()
}

func typed[T any](r *flagValues, name string) T {
	var zero T
	v := r.get(name)
	if v == nil {
		return zero
	}
	t, ok := v.(T)
	if !ok {
		if r.err == nil {
			r.err = fmt.Errorf("flag -%s is %T, want %T", name, v, zero)
		}
		return zero
	}
	return t
}

func (r *flagValues) str(name string) string             { return typed[string](r, name) }
func (r *flagValues) int(name string) int                { return typed[int](r, name) }
func (r *flagValues) int64(name string) int64            { return typed[int64](r, name) }
func (r *flagValues) uint(name string) uint              { return typed[uint](r, name) }
func (r *flagValues) bool(name string) bool              { return typed[bool](r, name) }
func (r *flagValues) float(name string) float64          { return typed[float64](r, name) }
func (r *flagValues) duration(name string) time.Duration { return typed[time.Duration](r, name) }
