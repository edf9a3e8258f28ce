package blockvol_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/blockvol/faultfs"
)

// metaState is the persisted state a reopened volume reports.
type metaState struct {
	epoch     uint64
	role      blockvol.Role
	config    string
	untrusted bool
}

func (m metaState) String() string {
	return fmt.Sprintf("{epoch %d role %v config %q untrusted %v}", m.epoch, m.role, m.config, m.untrusted)
}

func readMeta(v *blockvol.Volume) metaState {
	st := v.Status()
	return metaState{epoch: st.Epoch, role: st.Role, config: string(v.Config()), untrusted: st.Untrusted}
}

type metaStep struct {
	name string
	do   func(v *blockvol.Volume) error
}

// metaSteps is a sequence of fencing and metadata changes, each of which
// must be durable once it returns.
func metaSteps() []metaStep {
	return []metaStep{
		{"unfence(3,primary)", func(v *blockvol.Volume) error { return v.Unfence(3, blockvol.RolePrimary, time.Time{}) }},
		{"config A", func(v *blockvol.Volume) error { return v.SetConfig([]byte("members=a,b,c durability=sync")) }},
		{"untrusted", func(v *blockvol.Volume) error { return v.SetUntrusted(true) }},
		{"fence-epoch(5)", func(v *blockvol.Volume) error { return v.FenceEpoch(5) }},
		{"unfence(5,replica)", func(v *blockvol.Volume) error { return v.Unfence(5, blockvol.RoleReplica, time.Time{}) }},
		{"config B", func(v *blockvol.Volume) error { return v.SetConfig([]byte("members=a,b durability=quorum")) }},
		{"trusted", func(v *blockvol.Volume) error { return v.SetUntrusted(false) }},
		{"unfence(7,primary)", func(v *blockvol.Volume) error { return v.Unfence(7, blockvol.RolePrimary, time.Time{}) }},
	}
}

// TestCrashMetadataAtEverySync: role, epoch, config and the untrusted flag
// live in the superblock. Crash at every sync of a sequence of changes: the
// reopened volume must show the state after the last change that returned,
// or after the one in flight — never older — and must refuse an epoch below
// the one it shows.
func TestCrashMetadataAtEverySync(t *testing.T) {
	const size = 16 * 4096
	metaOps := metaSteps()
	opts := func(fs *faultfs.FS) blockvol.Options {
		return blockvol.Options{FS: faultFS{fs}, WALSize: 64 << 10, FlushInterval: time.Hour}
	}
	// Dry run: the state after each step, and the number of syncs.
	fs := faultfs.New()
	v, err := blockvol.Create(crashVolPath, size, opts(fs))
	if err != nil {
		t.Fatal(err)
	}
	states := []metaState{readMeta(v)}
	for _, op := range metaOps {
		if err := op.do(v); err != nil {
			t.Fatalf("%s: %v", op.name, err)
		}
		states = append(states, readMeta(v))
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	n := fs.SyncCount()
	if states[len(states)-1].epoch != 7 || states[3].config == "" || !states[3].untrusted {
		t.Fatalf("dry run states look wrong: %v", states)
	}

	for at := 1; at <= n; at++ {
		for seed := uint64(0); seed < 3; seed++ {
			mode := faultfs.CrashRandom
			if seed == 0 {
				mode = faultfs.CrashDropAll
			}
			fs := faultfs.New()
			fs.CrashAtSync(at, mode, seed)
			v, err := blockvol.Create(crashVolPath, size, opts(fs))
			if err != nil {
				if fs.CrashCount() == 0 {
					t.Fatalf("create: %v", err)
				}
				continue // crashed inside create: nothing was promised
			}
			done := 0 // steps that returned nil
			for _, op := range metaOps {
				if err := op.do(v); err != nil {
					if fs.CrashCount() == 0 {
						t.Fatalf("crash at %d: %s: %v", at, op.name, err)
					}
					break
				}
				done++
			}
			v.Close()
			if fs.CrashCount() == 0 {
				fs.Crash(mode, seed) // the armed sync was in Close
			}
			v, err = blockvol.Open(crashVolPath, opts(fs))
			if err != nil {
				t.Fatalf("crash at sync %d/%d (%s seed %d) after %d steps: open: %v", at, n, mode, seed, done, err)
			}
			got := readMeta(v)
			ok := got == states[done] || (done+1 < len(states) && got == states[done+1])
			if !ok {
				t.Fatalf("crash at sync %d/%d (%s seed %d) after %d steps: state %v, want %v or the next step's",
					at, n, mode, seed, done, got, states[done])
			}
			if !v.Status().Fenced {
				t.Fatalf("crash at sync %d: volume reopened unfenced", at)
			}
			if got.epoch > 0 {
				if err := v.Unfence(got.epoch-1, blockvol.RolePrimary, time.Time{}); !errors.Is(err, blockvol.ErrStaleEpoch) {
					t.Fatalf("crash at sync %d: unfence with epoch %d below %d: %v, want ErrStaleEpoch", at, got.epoch-1, got.epoch, err)
				}
			}
			if err := v.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
		}
	}
	t.Logf("%d sync points", n)
}
