package cluster

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/golang/glog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// Timeouts of the development cluster.
const (
	devStartTimeout  = 2 * time.Minute  // master and volume servers answering
	devCreateTimeout = 90 * time.Second // demo volume created (servers must join first)
	devStopTimeout   = 30 * time.Second // a child's orderly stop before SIGKILL
	devPoll          = 250 * time.Millisecond
)

// devReadyState is the block master's state of a volume that serves I/O.
const devReadyState = "ok"

// devVolumeServers is the number of volume servers of the dev cluster.
const devVolumeServers = 3

// DevUsage describes `weed block dev`.
const DevUsage = "run a local cluster (1 master + 3 volume servers) with a demo block volume"

// devConfig is `weed block dev`'s command line.
type devConfig struct {
	dir        string
	ip         string
	masterPort int
	volumePort int // first volume server; the others follow (+1, +2)
	nbdPort    int // first NBD port; +10 per server
	iscsiPort  int // first iSCSI portal; +1 per server
	replPort   int // first replication port; +10 per server
	volume     string
	size       uint64
	binary     string
}

func parseDevFlags(args []string, stderr io.Writer) (devConfig, error) {
	fs := flag.NewFlagSet("weed block dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := devConfig{}
	fs.StringVar(&c.dir, "dir", "./data", "data directory of the cluster (reused by the next run)")
	fs.StringVar(&c.ip, "ip", "127.0.0.1", "address every server binds and advertises")
	fs.IntVar(&c.masterPort, "master.port", 9333, "master HTTP port (gRPC: +10000)")
	fs.IntVar(&c.volumePort, "volume.port", 8080, "first volume server HTTP port; the others use the next ports (gRPC: +10000)")
	fs.IntVar(&c.nbdPort, "nbd.port", 10809, "first volume server's NBD port; +10 for each next server")
	fs.IntVar(&c.iscsiPort, "iscsi.port", 3260, "first volume server's iSCSI portal port; +1 for each next server")
	fs.IntVar(&c.replPort, "repl.port", 10810, "first volume server's block replication port; +10 for each next server")
	fs.StringVar(&c.volume, "volume", "demo", "name of the demo block volume (created when missing; empty: none)")
	size := fs.String("size", "1GiB", "size of the demo block volume")
	fs.StringVar(&c.binary, "weed", "", "weed binary to run the servers with (default: this binary)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	n, err := humanize.ParseBytes(*size)
	if err != nil || n == 0 {
		return c, fmt.Errorf("-size %q: not a positive size", *size)
	}
	c.size = n
	if err := c.checkPorts(); err != nil {
		return c, err
	}
	if c.binary == "" {
		if c.binary, err = os.Executable(); err != nil {
			return c, fmt.Errorf("locate the weed binary: %w", err)
		}
	}
	abs, err := filepath.Abs(c.dir)
	if err != nil {
		return c, fmt.Errorf("-dir %s: %w", c.dir, err)
	}
	c.dir = abs
	return c, nil
}

// checkPorts refuses port flags whose derived ports (the next servers'
// ports, gRPC at +10000) would fall outside 1..65535, so a bad flag is a
// clear error instead of a child that dies while starting.
func (c devConfig) checkPorts() error {
	last := devVolumeServers - 1
	for _, f := range []struct {
		name      string
		first, hi int
	}{
		{"master.port", c.masterPort, c.masterPort + 10000},
		{"volume.port", c.volumePort, c.volumePort + last + 10000},
		{"nbd.port", c.nbdPort, c.nbdPort + 10*last},
		{"iscsi.port", c.iscsiPort, c.iscsiPort + last},
		{"repl.port", c.replPort, c.replPort + 10*last},
	} {
		if f.first < 1 || f.hi > 65535 {
			return fmt.Errorf("-%s=%d: the ports it implies run up to %d; want them within 1..65535", f.name, f.first, f.hi)
		}
	}
	return nil
}

func (c devConfig) masterHTTP() string { return net.JoinHostPort(c.ip, strconv.Itoa(c.masterPort)) }
func (c devConfig) masterGRPC() string {
	return net.JoinHostPort(c.ip, strconv.Itoa(c.masterPort+10000))
}

// devChild is one server process of the dev cluster.
type devChild struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed when the process exited
	err  error         // Wait's result, valid after done
}

// devChildren returns the command lines of the master and the volume
// servers, each with its own directory and log directory under c.dir.
func (c devConfig) children() [][]string {
	mdir := filepath.Join(c.dir, "master")
	out := [][]string{{"master", "-logdir=" + mdir, "master",
		"-ip=" + c.ip, "-ip.bind=" + c.ip, "-port=" + strconv.Itoa(c.masterPort),
		"-mdir=" + mdir, "-peers=none", "-telemetry=false", "-volumeSizeLimitMB=256"}}
	for i := range devVolumeServers {
		name := fmt.Sprintf("volume%d", i+1)
		dir := filepath.Join(c.dir, name)
		out = append(out, []string{name, "-logdir=" + dir, "volume",
			"-ip=" + c.ip, "-ip.bind=" + c.ip, "-port=" + strconv.Itoa(c.volumePort+i),
			"-dir=" + dir, "-max=8", "-master=" + c.masterHTTP(),
			"-dataCenter=dc1", fmt.Sprintf("-rack=rack%d", i+1), "-preStopSeconds=0",
			"-block.dir=" + filepath.Join(dir, "block"),
			"-block.nbd=" + net.JoinHostPort(c.ip, strconv.Itoa(c.nbdPort+10*i)),
			"-block.iscsi=" + net.JoinHostPort(c.ip, strconv.Itoa(c.iscsiPort+i)),
			"-block.repl=" + net.JoinHostPort(c.ip, strconv.Itoa(c.replPort+10*i))})
	}
	return out
}

// Dev runs `weed block dev args...`: a master and three volume servers as
// child processes of the weed binary, data under -dir (a second run reuses
// it), the demo volume created through the master's BlockMaster API when
// missing, and its attach instructions printed. It runs until ctx is
// cancelled, then stops the volume servers and the master in order.
func Dev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseDevFlags(args, stderr)
	if err != nil {
		return err
	}
	d := &devCluster{cfg: c, stdout: stdout}
	defer d.stop()
	if err := d.start(); err != nil {
		return err
	}
	startCtx, cancel := context.WithTimeout(ctx, devStartTimeout)
	defer cancel()
	if err := d.waitHTTP(startCtx); err != nil {
		return err
	}
	if c.volume != "" {
		info, err := d.ensureVolume(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			fmt.Fprintf(stdout, "weed block dev: demo volume not available: %v\n", err)
		default:
			printAttach(stdout, info)
		}
	}
	fmt.Fprintf(stdout, "\nmaster  http://%s   shell: weed shell -master=%s\ndata    %s (kept for the next run)\nPress Ctrl-C to stop.\n",
		c.masterHTTP(), c.masterHTTP(), c.dir)
	select {
	case <-ctx.Done():
		fmt.Fprintln(stdout, "stopping the dev cluster ...")
		return nil
	case name := <-d.exited:
		return fmt.Errorf("%s exited unexpectedly; see its log under %s", name, c.dir)
	}
}

type devCluster struct {
	cfg      devConfig
	stdout   io.Writer
	children []*devChild
	exited   chan string // names of children that exited
	stopOnce sync.Once
}

func (d *devCluster) start() error {
	d.exited = make(chan string, devVolumeServers+1)
	for _, argv := range d.cfg.children() {
		name := argv[0]
		dir := filepath.Join(d.cfg.dir, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		logPath := filepath.Join(dir, "stderr.log")
		logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		cmd := exec.Command(d.cfg.binary, argv[1:]...)
		cmd.Stdout, cmd.Stderr = logf, logf
		// Own process group: a terminal Ctrl-C reaches only the parent, which
		// stops the children in order (volume servers first, then the master).
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			logf.Close()
			return fmt.Errorf("start %s: %w", name, err)
		}
		ch := &devChild{name: name, cmd: cmd, log: logf, done: make(chan struct{})}
		go func() {
			ch.err = cmd.Wait()
			close(ch.done)
			d.exited <- ch.name
		}()
		d.children = append(d.children, ch)
		glog.V(1).Infof("dev: started %s (pid %d), log %s", name, cmd.Process.Pid, logPath)
		fmt.Fprintf(d.stdout, "started %-8s pid %-7d log %s\n", name, cmd.Process.Pid, logPath)
	}
	return nil
}

// stop ends the children in reverse start order: SIGTERM (the servers stop
// through upstream's interrupt hooks), SIGKILL after devStopTimeout.
func (d *devCluster) stop() {
	d.stopOnce.Do(func() {
		for i := len(d.children) - 1; i >= 0; i-- {
			ch := d.children[i]
			select {
			case <-ch.done:
			default:
				_ = ch.cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-ch.done:
				case <-time.After(devStopTimeout):
					glog.Warningf("dev: %s did not stop within %v; killing it", ch.name, devStopTimeout)
					_ = ch.cmd.Process.Kill()
					<-ch.done
				}
			}
			ch.log.Close()
			glog.V(1).Infof("dev: %s stopped: %v", ch.name, ch.err)
		}
	})
}

// waitHTTP waits until the master and every volume server answer HTTP.
func (d *devCluster) waitHTTP(ctx context.Context) error {
	urls := []string{"http://" + d.cfg.masterHTTP() + "/cluster/status"}
	for i := range devVolumeServers {
		urls = append(urls, "http://"+net.JoinHostPort(d.cfg.ip, strconv.Itoa(d.cfg.volumePort+i))+"/status")
	}
	client := &http.Client{Timeout: 2 * time.Second}
	for _, u := range urls {
		for {
			resp, err := client.Get(u)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("waiting for %s: %w", u, ctx.Err())
			case name := <-d.exited:
				return fmt.Errorf("%s exited while starting; see its log under %s", name, d.cfg.dir)
			case <-time.After(devPoll):
			}
		}
	}
	return nil
}

// ensureVolume looks the demo volume up and creates it when missing,
// retrying while the cluster is still forming (servers joining, leader
// election).
func (d *devCluster) ensureVolume(ctx context.Context) (*blockpb.VolumeInfo, error) {
	cc, err := grpc.NewClient(d.cfg.masterGRPC(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("master %s: %w", d.cfg.masterGRPC(), err)
	}
	defer cc.Close()
	bm := blockpb.NewBlockMasterClient(cc)
	ctx, cancel := context.WithTimeout(ctx, devCreateTimeout)
	defer cancel()
	spec := &blockpb.VolumeSpec{Name: d.cfg.volume, SizeBytes: d.cfg.size, BlockSize: 4096,
		ReplicationFactor: 1, Durability: blockpb.Durability_DURABILITY_SYNC}
	var last error
	for {
		info, err := d.lookupOrCreate(ctx, bm, spec)
		if err == nil && info.GetState() == devReadyState {
			return info, nil
		}
		if err == nil {
			// Created or known, not serving yet (servers still joining after
			// a restart, assignment in flight): wait for it, or print what
			// the master says when the wait is over.
			last = fmt.Errorf("volume %q is %q", spec.Name, info.GetState())
			select {
			case <-ctx.Done():
				return info, nil
			case <-time.After(devPoll):
			}
			continue
		}
		if c := status.Code(err); c == codes.Unimplemented || c == codes.InvalidArgument || c == codes.AlreadyExists {
			return nil, err
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
		case <-time.After(time.Second):
		}
	}
}

func (d *devCluster) lookupOrCreate(ctx context.Context, bm blockpb.BlockMasterClient, spec *blockpb.VolumeSpec) (*blockpb.VolumeInfo, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	lr, err := bm.LookupVolume(rctx, &blockpb.LookupVolumeRequest{Name: spec.Name})
	if err == nil {
		return lr.GetVolume(), nil
	}
	if status.Code(err) != codes.NotFound {
		return nil, err
	}
	cr, err := bm.CreateVolume(rctx, &blockpb.CreateVolumeRequest{Spec: spec})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(d.stdout, "created block volume %q (%s)\n", spec.Name, humanize.IBytes(spec.SizeBytes))
	return cr.GetVolume(), nil
}

func printAttach(w io.Writer, v *blockpb.VolumeInfo) {
	if v == nil {
		return
	}
	name := v.GetSpec().GetName()
	fmt.Fprintf(w, "\nblock volume %q: %s, epoch %d, primary %s, state %q\n", name,
		humanize.IBytes(v.GetSpec().GetSizeBytes()), v.GetConfig().GetEpoch(),
		v.GetConfig().GetPrimaryServerId(), v.GetState())
	if uri := v.GetNbdUri(); uri != "" {
		fmt.Fprintf(w, "  NBD    %s\n         nbdinfo %s", uri, uri)
		if u, err := url.Parse(uri); err == nil && u.Port() != "" {
			fmt.Fprintf(w, "   |   sudo nbd-client -N %s %s %s /dev/nbd0", name, u.Hostname(), u.Port())
		}
		fmt.Fprintln(w)
	}
	if portal, iqn := v.GetIscsiPortal(), v.GetIscsiIqn(); portal != "" && iqn != "" {
		fmt.Fprintf(w, "  iSCSI  %s %s\n         iscsi-ls -s iscsi://%s   |   sudo iscsiadm -m discovery -t st -p %s && sudo iscsiadm -m node -T %s -p %s --login\n",
			portal, iqn, portal, portal, iqn, portal)
	}
}
