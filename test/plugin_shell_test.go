package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestPluginShellBlockCommands drives the block commands of `weed shell`
// against a real master and two volume servers: help, create, list,
// status (text and -json), delete, and every bad input with its error.
func TestPluginShellBlockCommands(t *testing.T) {
	c := startCluster(t, 2)
	name := uniqueName("v1")

	help := c.mustShell("help")
	for _, cmd := range []string{"block.create", "block.list", "block.status", "block.delete", "volume.list"} {
		if !strings.Contains(help, cmd) {
			t.Errorf("shell help does not list %s:\n%s", cmd, help)
		}
	}
	if out := c.mustShell("block.create -h"); !strings.Contains(out, "-durability") || !strings.Contains(out, "-size") {
		t.Errorf("block.create -h:\n%s", out)
	}

	out := c.create("-name=" + name + " -size=256MiB")
	if err := contains(out, "created block volume "+name+": 256 MiB, rf=1, durability sync, epoch 1",
		"nbd://", "/"+name, "iqn.2026-11.io.weedblock:"+name, "nbd-client", "iscsiadm"); err != nil {
		t.Fatalf("block.create output: %v\n%s", err, out)
	}
	t.Cleanup(func() { c.shell("block.delete -force -name=" + name) })

	v := c.waitServing(name, time.Minute)
	if v.Epoch != 1 || v.SizeBytes != 256<<20 || v.ReplicationFactor != 1 || v.Durability != "sync" ||
		len(v.Replicas) != 1 || v.Replicas[0].Role != "primary" || v.State != "ok" || v.LeaseExpiresUnixMs == 0 ||
		!strings.HasPrefix(v.Attach.NBDURI, "nbd://") || v.Attach.ISCSIPortal == "" {
		t.Fatalf("block.status -json: %+v", v)
	}
	if !c.external {
		if vs := c.volumeFor(v.Primary); vs.nbd == "" || v.Attach.NBDURI != "nbd://"+vs.nbd+"/"+name || v.Attach.ISCSIPortal != vs.iscsi {
			t.Fatalf("attach addresses %+v, want the primary's listeners nbd=%s iscsi=%s", v.Attach, vs.nbd, vs.iscsi)
		}
	}
	text := c.mustShell("block.status -name=" + name)
	t.Logf("block.status -name=%s:\n%s", name, text)
	if err := contains(text, "block volume "+name, "state:       ok", "epoch:       1", "valid for",
		"primary", "HEAD", "DURABLE", "CHECKPOINT", "NBD:", "iSCSI: portal"); err != nil {
		t.Fatalf("block.status: %v\n%s", err, text)
	}
	// A real client finds the export the status names.
	info := mustRun(t, time.Minute, "nbdinfo", v.Attach.NBDURI)
	if err := contains(info, "export-size: 268435456"); err != nil {
		t.Fatalf("nbdinfo %s: %v\n%s", v.Attach.NBDURI, err, info)
	}

	list := c.mustShell("block.list")
	if err := contains(list, "NAME", name, "256 MiB", "sync"); err != nil {
		t.Fatalf("block.list: %v\n%s", err, list)
	}
	var lj struct {
		Volumes []volumeView `json:"volumes"`
	}
	if err := json.Unmarshal([]byte(c.mustShell("block.list -json")), &lj); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, lv := range lj.Volumes {
		found = found || lv.Name == name && lv.Epoch == 1
	}
	if !found {
		t.Fatalf("block.list -json misses %s: %+v", name, lj)
	}

	t.Run("bad input", func(t *testing.T) {
		c.shellFails("block.create -name=bad -size=lots", "not a size")
		c.shellFails("block.create -name=Bad_Name -size=8MiB", "bad volume name")
		c.shellFails("block.create -name=odd -size=1000", "not a multiple of the block size")
		c.shellFails("block.create -name=nosize", "-size is required")
		c.shellFails("block.create -name=q -size=8MiB -durability=quorum", "needs -rf=3")
		c.shellFails("block.create -name=q -size=8MiB -durability=fast", "want sync, quorum or async")
		c.shellFails("block.create -name="+name+" -size=8MiB", "already exists", "block.status -name="+name)
		c.shellFails("block.create -name=huge -size=512TiB", "not enough space")
		c.shellFails("block.status -name=nope", "no such block volume", "block.list")
		c.shellFails("block.delete -name=nope", "no such block volume")
		c.shellFails("block.status", "-name is required")
		if r := c.shell("block.frobnicate"); r.code == 0 || !strings.Contains(r.stderr, "unknown command") {
			t.Fatalf("unknown block command: exit %d, stderr %q", r.code, r.stderr)
		}
		if !c.external { // an existing cluster may have 3 servers
			c.shellFails("block.create -name=three -size=8MiB -rf=3", "not enough block servers", "lower -rf")
		}
		// Nothing of the refused requests was created.
		if l := c.mustShell("block.list"); strings.Contains(l, "huge") || strings.Contains(l, "three") || strings.Contains(l, "odd") {
			t.Fatalf("a refused create left a volume:\n%s", l)
		}
	})

	t.Run("delete refused while attached", func(t *testing.T) {
		requireTools(t, "qemu-io")
		// qemu-io keeps its NBD connection while its stdin is open.
		q := exec.Command("qemu-io", "-f", "raw", v.Attach.NBDURI)
		stdin, err := q.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var qout bytes.Buffer
		q.Stdout, q.Stderr = &qout, &qout
		if err := q.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { stdin.Close(); q.Wait() }()
		waitFor(t, 30*time.Second, "the master sees the NBD session", func() error {
			s, err := c.status(name)
			if err != nil {
				return err
			}
			if s.Replicas[0].AttachedSessions == 0 {
				return fmt.Errorf("attached_sessions 0 (qemu-io: %q)", qout.String())
			}
			return nil
		})
		c.shellFails("block.delete -name="+name, "volume is attached", "-force")
		if _, err := c.status(name); err != nil {
			t.Fatalf("refused delete removed the volume: %v", err)
		}
		io.WriteString(stdin, "quit\n")
	})

	t.Run("rf=2 placement", func(t *testing.T) {
		name2 := uniqueName("pair")
		var cv volumeView
		if err := json.Unmarshal([]byte(c.mustShell("block.create -json -name="+name2+" -size=16MiB -rf=2")), &cv); err != nil {
			t.Fatalf("block.create -json: %v", err)
		}
		defer c.shell("block.delete -force -name=" + name2)
		if cv.Name != name2 || cv.Epoch != 1 || cv.ReplicationFactor != 2 || len(cv.Replicas) != 2 {
			t.Fatalf("block.create -json: %+v", cv)
		}
		r0, r1 := cv.Replicas[0], cv.Replicas[1]
		if r0.ServerID == r1.ServerID || r0.Role != "primary" || r1.Role != "replica" || cv.Primary != r0.ServerID {
			t.Fatalf("rf=2 placement: %+v", cv.Replicas)
		}
		if !c.external {
			// Two servers on two racks: one copy on each.
			if out := c.mustShell("block.status -name=" + name2); !strings.Contains(out, "rack1") || !strings.Contains(out, "rack2") {
				t.Fatalf("copies not on distinct racks:\n%s", out)
			}
		}
		c.waitServing(name2, time.Minute)
		// Operator promotes: the replica becomes primary in a new epoch;
		// forced back, the next epoch carries a loss warning.
		c.shellFails("block.promote -name="+name2+" -to=nowhere:1", "unknown server")
		c.shellFails("block.promote -name="+name2+" -to="+r0.ServerID, "already the primary")
		var pv volumeView
		if err := json.Unmarshal([]byte(c.mustShell("block.promote -json -name="+name2+" -to="+r1.ServerID)), &pv); err != nil {
			t.Fatalf("block.promote -json: %v", err)
		}
		if pv.Primary != r1.ServerID || pv.Epoch <= cv.Epoch || pv.Warning != "" {
			t.Fatalf("promote: primary %s epoch %d warning %q (was %s, epoch %d)", pv.Primary, pv.Epoch, pv.Warning, cv.Primary, cv.Epoch)
		}
		pv = c.waitServing(name2, time.Minute)
		out := c.mustShell("block.promote -force -name=" + name2 + " -to=" + r0.ServerID)
		if err := contains(out, "promoted "+r0.ServerID+" to primary of "+name2, "WARNING"); err != nil {
			t.Fatalf("forced promote: %v\n%s", err, out)
		}
		if fv := c.waitServing(name2, time.Minute); fv.Epoch <= pv.Epoch || fv.Primary != r0.ServerID {
			t.Fatalf("after the forced promote: primary %s epoch %d", fv.Primary, fv.Epoch)
		}
		if out := c.mustShell("block.delete -json -name=" + name2); strings.TrimSpace(out) != "{\n  \"deleted\": \""+name2+"\"\n}" {
			t.Fatalf("block.delete -json: %q", out)
		}
	})

	t.Run("upstream files", func(t *testing.T) { checkUpstreamFiles(t, c.masterHTTP) })

	t.Run("delete", func(t *testing.T) {
		waitFor(t, 30*time.Second, "the NBD session is gone", func() error {
			s, err := c.status(name)
			if err != nil {
				return err
			}
			if n := s.Replicas[0].AttachedSessions; n != 0 {
				return fmt.Errorf("%d sessions", n)
			}
			return nil
		})
		if out := c.mustShell("block.delete -name=" + name); !strings.Contains(out, "deleted block volume "+name) {
			t.Fatalf("block.delete: %q", out)
		}
		c.shellFails("block.status -name="+name, "no such block volume")
		if l := c.mustShell("block.list"); strings.Contains(l, name+" ") {
			t.Fatalf("block.list after delete:\n%s", l)
		}
		// The volume server dropped the export.
		r := runCmd(t, time.Minute, "nbdinfo", v.Attach.NBDURI)
		if r.code == 0 {
			t.Fatalf("nbdinfo still finds the deleted export:\n%s", r.stdout)
		}
		// The name can be used again, in a later epoch than the deleted
		// volume's: epochs of a name never go backwards.
		var again volumeView
		if err := json.Unmarshal([]byte(c.mustShell("block.create -json -name="+name+" -size=8MiB")), &again); err != nil {
			t.Fatal(err)
		}
		if again.Epoch <= v.Epoch || again.SizeBytes != 8<<20 {
			t.Fatalf("re-created %s in epoch %d (%d bytes); the deleted one was in epoch %d", name, again.Epoch, again.SizeBytes, v.Epoch)
		}
		c.mustShell("block.delete -name=" + name)
	})
}

// volumeFor returns the volume server whose id (ip:port) is id.
func (c *testCluster) volumeFor(id string) *volumeServer {
	c.t.Helper()
	for _, vs := range c.volumes {
		if vs.http == id {
			return vs
		}
	}
	c.t.Fatalf("no volume server with id %q", id)
	return nil
}

// checkUpstreamFiles stores a file the SeaweedFS way (assign a file id on
// the master, POST it to the volume server) and reads it back.
func checkUpstreamFiles(t *testing.T, masterHTTP string) {
	t.Helper()
	var assign struct {
		Fid, URL, PublicURL, Error string
	}
	waitFor(t, time.Minute, "the master assigns a file id", func() error {
		if err := getJSON("http://"+masterHTTP+"/dir/assign", &assign); err != nil {
			return err
		}
		if assign.Error != "" || assign.Fid == "" {
			return fmt.Errorf("assign: %+v", assign)
		}
		return nil
	})
	payload := randomData(100<<10, 77)
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, err := mw.CreateFormFile("file", "e2e.bin")
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(payload)
	mw.Close()
	url := "http://" + assign.URL + "/" + assign.Fid
	resp, err := http.Post(url, mw.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s: %s", url, resp.Status, msg)
	}
	resp, err = http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, payload) {
		t.Fatalf("GET %s: %s, %d bytes (want the %d bytes stored)", url, resp.Status, len(got), len(payload))
	}
	// And through the master's lookup, as clients find it.
	vid, _, _ := strings.Cut(assign.Fid, ",")
	var lookup struct {
		Locations []struct{ URL string }
	}
	if err := getJSON("http://"+masterHTTP+"/dir/lookup?volumeId="+vid, &lookup); err != nil || len(lookup.Locations) == 0 {
		t.Fatalf("lookup volume %s: %v %+v", vid, err, lookup)
	}
}
