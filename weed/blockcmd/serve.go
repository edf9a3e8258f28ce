package blockcmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/dustin/go-humanize"
	"github.com/golang/glog"

	"github.com/weedblock/weedblock/blockvol"
	"github.com/weedblock/weedblock/frontend/iscsi"
	"github.com/weedblock/weedblock/frontend/nbd"
	"github.com/weedblock/weedblock/frontend/scsi"
)

// serveConfig is the validated command line of `weed block serve`.
type serveConfig struct {
	file      string
	size      int64 // 0: not given (required only to create the file)
	blockSize int   // 0: not given (engine default on create)
	walSize   int64 // 0: not given (engine default on create)
	nbdAddr   string
	iscsiAddr string
	name      string
	chap      *iscsi.CHAP
}

// volumeNameRE is what a volume name may look like: it becomes the NBD export
// name and the suffix of an IQN, which allows only lower-case letters,
// digits, '.', '-' and ':'.
var volumeNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,62}[a-z0-9])?$`)

// parseServe parses and validates the flags of `weed block serve`. Flag
// syntax errors and -h go to out.
func parseServe(args []string, out io.Writer) (serveConfig, error) {
	fset := flag.NewFlagSet("weed block serve", flag.ContinueOnError)
	fset.SetOutput(out)
	file := fset.String("file", "", "volume file; created when missing (then -size is required)")
	size := fset.String("size", "", "volume capacity, e.g. 1GiB, 512MiB or a byte count; must match an existing file")
	blockSize := fset.Int("blockSize", blockvol.DefaultBlockSize, "logical block size in bytes (power of two, 512..1MiB); used when creating")
	walSize := fset.String("walSize", "64MiB", "write-ahead log size (multiple of 4KiB, at least 64KiB); used when creating")
	nbdAddr := fset.String("nbd", "", "NBD listen address (host:port); empty disables NBD")
	iscsiAddr := fset.String("iscsi", "", "iSCSI listen address (host:port); empty disables iSCSI")
	name := fset.String("name", "", "volume name: NBD export name and IQN suffix ("+iscsi.IQNPrefix+"NAME); default: the file's base name without extension")
	chapUser := fset.String("chap.user", "", "iSCSI CHAP user an initiator must log in with (with -chap.secret)")
	chapSecret := fset.String("chap.secret", "", "iSCSI CHAP secret (with -chap.user)")
	fset.Usage = func() {
		fmt.Fprintf(out, "Usage: weed block serve -file=PATH [-size=SIZE] [-nbd=ADDR] [-iscsi=ADDR] [flags]\n\n"+
			"Serves one local volume file over NBD and/or iSCSI (LUN 0) until SIGINT or SIGTERM,\n"+
			"then stops the listeners, flushes and closes the volume.\n\nFlags:\n")
		fset.PrintDefaults()
	}
	if err := fset.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return serveConfig{}, err
		}
		return serveConfig{}, usagef("%v", err)
	}
	set := map[string]bool{}
	fset.Visit(func(f *flag.Flag) { set[f.Name] = true })

	var cfg serveConfig
	if fset.NArg() > 0 {
		return cfg, usagef("unexpected arguments %q", fset.Args())
	}
	if *file == "" {
		return cfg, usagef("-file is required")
	}
	cfg.file = *file
	if set["size"] {
		n, err := parseSize(*size)
		if err != nil {
			return cfg, usagef("-size=%q: %v", *size, err)
		}
		cfg.size = n
	}
	if set["blockSize"] {
		bs := *blockSize
		if bs < 512 || bs > 1<<20 || bs&(bs-1) != 0 {
			return cfg, usagef("-blockSize=%d: must be a power of two from 512 to 1048576", bs)
		}
		cfg.blockSize = bs
	}
	if cfg.size > 0 && cfg.size%int64(effectiveBlockSize(cfg.blockSize)) != 0 {
		return cfg, usagef("-size=%s (%d bytes) is not a multiple of the block size %d", *size, cfg.size, effectiveBlockSize(cfg.blockSize))
	}
	if set["walSize"] {
		n, err := parseSize(*walSize)
		if err != nil {
			return cfg, usagef("-walSize=%q: %v", *walSize, err)
		}
		if n < 64<<10 || n%4096 != 0 {
			return cfg, usagef("-walSize=%s: must be a multiple of 4KiB and at least 64KiB", *walSize)
		}
		cfg.walSize = n
	}
	cfg.nbdAddr, cfg.iscsiAddr = *nbdAddr, *iscsiAddr
	if cfg.nbdAddr == "" && cfg.iscsiAddr == "" {
		return cfg, usagef("nothing to serve: give -nbd=ADDR and/or -iscsi=ADDR")
	}
	for flagName, addr := range map[string]string{"nbd": cfg.nbdAddr, "iscsi": cfg.iscsiAddr} {
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return cfg, usagef("-%s=%q: %v", flagName, addr, err)
		}
	}
	cfg.name = *name
	if cfg.name == "" {
		cfg.name = strings.TrimSuffix(filepath.Base(cfg.file), filepath.Ext(cfg.file))
		if !volumeNameRE.MatchString(cfg.name) {
			return cfg, usagef("the file name %q is not a valid volume name; give -name (lower-case letters, digits, '.', '-'; at most 64)", cfg.name)
		}
	} else if !volumeNameRE.MatchString(cfg.name) {
		return cfg, usagef("-name=%q: a volume name has lower-case letters, digits, '.', '-' (not at either end), at most 64", cfg.name)
	}
	if (*chapUser == "") != (*chapSecret == "") {
		return cfg, usagef("-chap.user and -chap.secret go together")
	}
	if *chapUser != "" {
		if cfg.iscsiAddr == "" {
			return cfg, usagef("-chap.user needs -iscsi")
		}
		cfg.chap = &iscsi.CHAP{User: *chapUser, Secret: *chapSecret}
	}
	return cfg, nil
}

// parseSize parses a byte count with an optional unit: 1GiB, 512MiB, 4KiB
// (powers of two) or 1GB, 10MB (powers of ten), or plain bytes.
func parseSize(s string) (int64, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("not a size (want e.g. 1GiB, 512MiB or a byte count): %w", err)
	}
	if n == 0 {
		return 0, errors.New("size must be positive")
	}
	if n > math.MaxInt64 {
		return 0, errors.New("size too large")
	}
	return int64(n), nil
}

func effectiveBlockSize(bs int) int {
	if bs == 0 {
		return blockvol.DefaultBlockSize
	}
	return bs
}

// openVolume opens cfg.file standalone (unfenced, its own primary),
// creating it first when it does not exist. An existing file must agree
// with every geometry flag the user gave.
func openVolume(cfg serveConfig) (vol *blockvol.Volume, created bool, err error) {
	opts := blockvol.Options{Standalone: true}
	_, err = os.Stat(cfg.file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if cfg.size == 0 {
			return nil, false, usagef("%s does not exist; give -size to create it", cfg.file)
		}
		opts.BlockSize = cfg.blockSize
		opts.WALSize = cfg.walSize
		vol, err = blockvol.Create(cfg.file, cfg.size, opts)
		if err != nil {
			// Do not leave a half-made file that the next start would
			// refuse to open.
			os.Remove(cfg.file)
			return nil, false, err
		}
		return vol, true, nil
	case err != nil:
		return nil, false, fmt.Errorf("stat %s: %w", cfg.file, err)
	}
	vol, err = blockvol.Open(cfg.file, opts)
	if err != nil {
		return nil, false, err
	}
	var mismatch string
	switch {
	case cfg.size != 0 && cfg.size != vol.Size():
		mismatch = fmt.Sprintf("size mismatch: %s holds %d bytes (%s), -size asks for %d", cfg.file, vol.Size(), humanize.IBytes(uint64(vol.Size())), cfg.size)
	case cfg.blockSize != 0 && cfg.blockSize != vol.BlockSize():
		mismatch = fmt.Sprintf("block size mismatch: %s has %d-byte blocks, -blockSize asks for %d", cfg.file, vol.BlockSize(), cfg.blockSize)
	}
	if mismatch != "" {
		if cerr := vol.Close(); cerr != nil {
			return nil, false, fmt.Errorf("%s (and close: %v)", mismatch, cerr)
		}
		return nil, false, errors.New(mismatch)
	}
	return vol, false, nil
}

// runServe is `weed block serve`.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseServe(args, stderr)
	if err != nil {
		return err
	}
	return serve(ctx, cfg, func(r readyInfo) {
		fmt.Fprintln(stdout, r.String())
	})
}

// readyInfo describes a volume being served; it is printed once every
// listener is open.
type readyInfo struct {
	name      string
	file      string
	created   bool
	size      int64
	blockSize int
	nbd       net.Addr // nil when NBD is off
	iscsi     net.Addr // nil when iSCSI is off
}

func (r readyInfo) String() string {
	var b strings.Builder
	verb := "opened"
	if r.created {
		verb = "created"
	}
	fmt.Fprintf(&b, "weed block serve: %s %s (%d bytes, %d-byte blocks), serving %q", verb, r.file, r.size, r.blockSize, r.name)
	if r.nbd != nil {
		fmt.Fprintf(&b, " nbd=%s", r.nbd)
	}
	if r.iscsi != nil {
		fmt.Fprintf(&b, " iscsi=%s target=%s", r.iscsi, iscsi.IQN(r.name))
	}
	return b.String()
}

// serve opens (or creates) the volume, serves it on the configured
// listeners, calls ready once they are all open, and returns after ctx is
// cancelled and everything has stopped: listeners and connections closed,
// the volume flushed and closed. A listener that fails stops the whole
// server with its error.
func serve(ctx context.Context, cfg serveConfig, ready func(readyInfo)) (err error) {
	// Listen before opening the volume, so a busy port fails fast and
	// touches nothing on disk.
	var nbdL, iscsiL net.Listener
	closeListeners := func() {
		for _, l := range []net.Listener{nbdL, iscsiL} {
			if l != nil {
				l.Close()
			}
		}
	}
	if cfg.nbdAddr != "" {
		if nbdL, err = net.Listen("tcp", cfg.nbdAddr); err != nil {
			return fmt.Errorf("nbd listen: %w", err)
		}
	}
	if cfg.iscsiAddr != "" {
		if iscsiL, err = net.Listen("tcp", cfg.iscsiAddr); err != nil {
			closeListeners()
			return fmt.Errorf("iscsi listen: %w", err)
		}
	}

	vol, created, err := openVolume(cfg)
	if err != nil {
		closeListeners()
		return err
	}
	defer func() {
		// Whatever happened, make acknowledged writes durable and close.
		if ferr := vol.Flush(); ferr != nil {
			err = errors.Join(err, fmt.Errorf("flush %s: %w", cfg.file, ferr))
		}
		if cerr := vol.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close %s: %w", cfg.file, cerr))
		}
		if err == nil {
			glog.Infof("block serve: %s flushed and closed", cfg.file)
		}
	}()

	// Every server goroutine reports here; the first unexpected error ends
	// serving.
	failed := make(chan error, 2)
	var wg sync.WaitGroup
	var closers []func() error

	info := readyInfo{name: cfg.name, file: cfg.file, created: created, size: vol.Size(), blockSize: vol.BlockSize()}
	if nbdL != nil {
		srv := nbd.NewServer(nbd.Options{})
		if err := srv.AddExport(cfg.name, "weedblock volume "+cfg.name, vol); err != nil {
			closeListeners()
			srv.Close()
			return fmt.Errorf("nbd export %s: %w", cfg.name, err)
		}
		closers = append(closers, srv.Close)
		info.nbd = nbdL.Addr()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(nbdL); err != nil && !errors.Is(err, nbd.ErrServerClosed) {
				failed <- fmt.Errorf("nbd serve %s: %w", info.nbd, err)
			}
		}()
	}
	if iscsiL != nil {
		srv := iscsi.NewServer(iscsi.Config{})
		lu := scsi.NewLogicalUnit(vol, scsi.Options{
			VolumeName: cfg.name,
			DeviceName: iscsi.IQN(cfg.name),
		})
		// SCSITarget forwards LU/target resets and the end of sessions to lu.
		t := iscsi.SCSITarget(iscsi.IQN(cfg.name), lu)
		t.Alias = cfg.name
		t.CHAP = cfg.chap
		if err := srv.AddTarget(t); err != nil {
			iscsiL.Close()
			srv.Close()
			err = fmt.Errorf("iscsi target %s: %w", t.Name, err)
			return errors.Join(err, stopAll(closers, &wg))
		}
		closers = append(closers, srv.Close)
		info.iscsi = iscsiL.Addr()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(iscsiL); err != nil && !errors.Is(err, iscsi.ErrServerClosed) {
				failed <- fmt.Errorf("iscsi serve %s: %w", info.iscsi, err)
			}
		}()
	}

	glog.Info(info.String())
	ready(info)

	select {
	case <-ctx.Done():
		glog.Infof("block serve: stopping (%v)", context.Cause(ctx))
	case err = <-failed:
		glog.Errorf("block serve: %v; stopping", err)
	}
	return errors.Join(err, stopAll(closers, &wg))
}

// stopAll closes every server (listeners and connections, waiting for their
// goroutines) and waits for the Serve goroutines.
func stopAll(closers []func() error, wg *sync.WaitGroup) error {
	var errs []error
	for _, c := range closers {
		if err := c(); err != nil {
			errs = append(errs, err)
		}
	}
	wg.Wait()
	return errors.Join(errs...)
}
