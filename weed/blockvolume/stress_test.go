package blockvolume

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// TestConcurrentControlPlane: allocations, deletes, status calls and a fast
// heartbeat (assignments and grants every 10 ms) run at once for a while;
// nothing races or deadlocks, and afterwards the open volumes and the files
// on disk are the same set.
func TestConcurrentControlPlane(t *testing.T) {
	f := startFakeMaster(t)
	f.setRespond(confirm(500))
	dir := t.TempDir()
	m := startManager(t, dir, func(o *Options) {
		withMasters(f.addr)(o)
		o.Pulse = 10 * time.Millisecond
	})
	svc := m.GRPCService()
	ctx := context.Background()
	deadline := time.Now().Add(time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				name := fmt.Sprintf("w%d-%d", w, i%4)
				_, err := svc.AllocateVolume(ctx, &blockpb.AllocateVolumeRequest{Spec: spec(name, 256<<10), Config: epochConfig(1, testServerID)})
				if err != nil {
					errs <- fmt.Errorf("allocate %s: %w", name, err)
					return
				}
				if i%3 == 0 {
					if _, err := svc.DeleteVolume(ctx, &blockpb.DeleteLocalVolumeRequest{Name: name, Force: true}); err != nil {
						errs <- fmt.Errorf("delete %s: %w", name, err)
						return
					}
				}
				if _, err := svc.VolumeStatus(ctx, &blockpb.LocalVolumeStatusRequest{}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for time.Now().Before(deadline) {
			if _, err := m.statusReport(""); err != nil {
				errs <- err
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	names := m.names()
	var files []string
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		files = append(files, strings.TrimSuffix(e.Name(), FileExt))
	}
	sort.Strings(files)
	if strings.Join(names, ",") != strings.Join(files, ",") {
		t.Fatalf("open volumes %v, files %v", names, files)
	}
	if len(names) == 0 {
		t.Fatal("no volume left at the end")
	}
	// Every surviving volume was confirmed and is writable.
	for _, n := range names {
		eventually(t, 5*time.Second, n+" writable", func() bool {
			r, _ := m.reports(n)
			return len(r) == 1 && !r[0].GetFenced()
		})
	}
	if _, err := os.Stat(filepath.Join(dir, names[0]+FileExt)); err != nil {
		t.Fatal(err)
	}
}
