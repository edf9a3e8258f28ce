package blockshell

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// Defaults of block.create, as the master applies them too.
const (
	DefaultBlockSize  = 4096
	DefaultRF         = 1
	DefaultDurability = "sync"
	// DefaultTimeout bounds one command (create allocates on the servers).
	DefaultTimeout = time.Minute
)

// nameRE is the master's rule for volume names (an iSCSI IQN suffix cannot
// hold '_'); checking it here saves a round trip and gives the same text.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,62}$`)

// CheckName returns a usage error unless name is a valid volume name.
func CheckName(cmd, name string) error {
	if name == "" {
		return usagef(cmd, "-name is required")
	}
	if !nameRE.MatchString(name) {
		return usagef(cmd, "bad volume name %q: want 1-63 characters of a-z, 0-9, '.', '-', starting with a letter or digit", name)
	}
	return nil
}

// Env is how the commands reach the master leader.
type Env struct {
	// Master returns the gRPC address (host:port) of the master the shell
	// is connected to (the leader, as far as the shell knows).
	Master func(ctx context.Context) (string, error)
	// Call runs fn with a BlockMaster client on the master at grpcAddr.
	Call func(ctx context.Context, grpcAddr string, fn func(blockpb.BlockMasterClient) error) error
	// Now is the clock used to date leases in the output (default time.Now).
	Now func() time.Time
}

// Command is one block.* shell command.
type Command struct {
	Name string
	// Help is the text `help NAME` shows; its first line is the summary.
	Help string
}

// Commands are the block commands, in the order `help` should list them.
func Commands() []Command {
	return []Command{
		{Name: "block.create", Help: "create a block volume: block.create -name=NAME -size=SIZE [-rf=1] [-durability=sync|quorum|async]\n" +
			"\n\tThe master places the copies on volume servers with block support (-block.dir),\n" +
			"\tpersists the volume's first epoch and allocates it; the output says how to attach it.\n" +
			"\tSIZE takes units: 512MiB, 20GiB, 1G (= 1GiB), 1TiB; a multiple of -blockSize.\n"},
		{Name: "block.list", Help: "list block volumes: block.list [-json]\n" +
			"\n\tOne line per volume: size, replication, epoch, state, primary and attached sessions.\n"},
		{Name: "block.status", Help: "show a block volume: block.status -name=NAME [-json]\n" +
			"\n\tPlacement, epoch, role and LSNs (head, durable, checkpoint) of every replica,\n" +
			"\tthe primary's lease, and how to attach it (NBD URI, iSCSI portal and IQN).\n"},
		{Name: "block.promote", Help: "make a server the primary of a block volume: block.promote -name=NAME -to=SERVER [-force]\n" +
			"\n\tThe master persists a new epoch with SERVER (a server id as block.status shows it) as primary.\n" +
			"\tWithout -force SERVER must be a member an automatic failover could pick (alive, trusted,\n" +
			"\thealthy, no durable LSN behind another member's); a live old primary stays as a replica.\n" +
			"\t-force accepts any alive server holding a trusted copy: writes it lacks are lost (block.status warns).\n" +
			"\tEither way the new primary serves only once the old primary's lease has run out.\n"},
		{Name: "block.repair", Help: "bring copies of a block volume back through recovery: block.repair -name=NAME [-replica=SERVER] [-rebuild] [-json]\n" +
			"\n\tWithout -replica every copy other than the primary is named. A named member of the current\n" +
			"\tepoch already follows the primary and is left alone unless -rebuild: then it leaves the epoch\n" +
			"\tand is rebuilt in full. Every named copy outside the epoch is planned again by the primary\n" +
			"\t(catch-up, truncation or rebuild; -rebuild forces a full rebuild) and rejoins once in sync.\n" +
			"\tThe primary itself cannot be repaired: block.promote another member first. block.status\n" +
			"\tshows each recovery's phase, bytes and ETA.\n"},
		{Name: "block.delete", Help: "delete a block volume: block.delete -name=NAME [-force]\n" +
			"\n\tRefused while NBD/iSCSI clients are attached unless -force. The data is gone.\n"},
	}
}

// common are the flags every command has.
type common struct {
	json    bool
	timeout time.Duration
}

func newFlagSet(cmd string, c *common) *flag.FlagSet {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, usage printed on -h only
	fs.BoolVar(&c.json, "json", false, "print JSON instead of text")
	fs.DurationVar(&c.timeout, "timeout", DefaultTimeout, "give up on the master after this long")
	return fs
}

// parse parses args into fs. It returns errHelp (after printing the usage
// to out) for -h, and a usage error for anything wrong.
func parse(fs *flag.FlagSet, help string, args []string, out io.Writer) error {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(out, "%s\t# %s\n", fs.Name(), strings.TrimSpace(help))
		fs.SetOutput(out)
		fs.PrintDefaults()
		return errHelp
	}
	if err != nil {
		return usagef(fs.Name(), "%v", err)
	}
	return nil
}

// errHelp ends a command that only printed its usage.
var errHelp = errors.New("help printed")

func helpOf(name string) string {
	for _, c := range Commands() {
		if c.Name == name {
			return c.Help
		}
	}
	return ""
}

// CreateRequest is a parsed block.create.
type CreateRequest struct {
	Spec    *blockpb.VolumeSpec
	JSON    bool
	Timeout time.Duration
}

// ParseCreate parses block.create's arguments. It returns (zero, nil,
// true) when it printed the usage for -h.
func ParseCreate(args []string, out io.Writer) (CreateRequest, bool, error) {
	const cmd = "block.create"
	var c common
	fs := newFlagSet(cmd, &c)
	name := fs.String("name", "", "volume name: 1-63 of a-z, 0-9, '.', '-'")
	size := fs.String("size", "", "volume size, e.g. 512MiB, 20GiB, 1G (binary units)")
	rf := fs.Uint("rf", DefaultRF, "replication factor: copies on distinct servers (1-3)")
	dur := fs.String("durability", DefaultDurability, "when a FLUSH is acknowledged: sync | quorum (rf>=3) | async")
	bs := fs.Uint("blockSize", DefaultBlockSize, "logical block size in bytes (power of two, 512-65536)")
	wal := fs.String("walSize", "", "write-ahead log size (default: the master's, 64MiB)")
	if err := parse(fs, helpOf(cmd), args, out); err != nil {
		if err == errHelp {
			return CreateRequest{}, true, nil
		}
		return CreateRequest{}, false, err
	}
	if fs.NArg() > 0 {
		return CreateRequest{}, false, usagef(cmd, "unexpected arguments %q", fs.Args())
	}
	if err := CheckName(cmd, *name); err != nil {
		return CreateRequest{}, false, err
	}
	if *size == "" {
		return CreateRequest{}, false, usagef(cmd, "-size is required")
	}
	n, err := ParseSize(*size)
	if err != nil {
		return CreateRequest{}, false, usagef(cmd, "-size %v", err)
	}
	if n == 0 {
		return CreateRequest{}, false, usagef(cmd, "-size must be more than 0")
	}
	if *bs < 512 || *bs > 64<<10 || *bs&(*bs-1) != 0 {
		return CreateRequest{}, false, usagef(cmd, "-blockSize %d: want a power of two from 512 to 65536", *bs)
	}
	if n%uint64(*bs) != 0 {
		return CreateRequest{}, false, usagef(cmd, "-size %s (%d bytes) is not a multiple of the block size %d", *size, n, *bs)
	}
	if *rf < 1 || *rf > 3 {
		return CreateRequest{}, false, usagef(cmd, "-rf=%d: want 1, 2 or 3", *rf)
	}
	d, err := parseDurability(cmd, *dur)
	if err != nil {
		return CreateRequest{}, false, err
	}
	if d == blockpb.Durability_DURABILITY_QUORUM && *rf < 3 {
		return CreateRequest{}, false, usagef(cmd, "-durability=quorum needs -rf=3 (a majority of 1 or 2 copies is all of them; use sync)")
	}
	var walBytes uint64
	if *wal != "" {
		if walBytes, err = ParseSize(*wal); err != nil {
			return CreateRequest{}, false, usagef(cmd, "-walSize %v", err)
		}
		if walBytes == 0 {
			return CreateRequest{}, false, usagef(cmd, "-walSize must be more than 0 (omit it for the default)")
		}
	}
	return CreateRequest{
		Spec: &blockpb.VolumeSpec{
			Name: *name, SizeBytes: n, BlockSize: uint32(*bs), WalSizeBytes: walBytes,
			ReplicationFactor: uint32(*rf), Durability: d,
		},
		JSON: c.json, Timeout: c.timeout,
	}, false, nil
}

func parseDurability(cmd, s string) (blockpb.Durability, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "sync":
		return blockpb.Durability_DURABILITY_SYNC, nil
	case "quorum":
		return blockpb.Durability_DURABILITY_QUORUM, nil
	case "async":
		return blockpb.Durability_DURABILITY_ASYNC, nil
	}
	return 0, usagef(cmd, "-durability=%q: want sync, quorum or async", s)
}

// NameRequest is a parsed block.status or block.delete.
type NameRequest struct {
	Name    string
	Force   bool // block.delete only
	JSON    bool
	Timeout time.Duration
}

// ParseStatus parses block.status's arguments; the name may also be given
// as the only positional argument (block.status db1).
func ParseStatus(args []string, out io.Writer) (NameRequest, bool, error) {
	return parseNamed("block.status", args, out, false)
}

// ParseDelete parses block.delete's arguments.
func ParseDelete(args []string, out io.Writer) (NameRequest, bool, error) {
	return parseNamed("block.delete", args, out, true)
}

func parseNamed(cmd string, args []string, out io.Writer, withForce bool) (NameRequest, bool, error) {
	var c common
	fs := newFlagSet(cmd, &c)
	name := fs.String("name", "", "volume name")
	var force *bool
	if withForce {
		force = fs.Bool("force", false, "delete even while NBD/iSCSI clients are attached")
	}
	if err := parse(fs, helpOf(cmd), args, out); err != nil {
		if err == errHelp {
			return NameRequest{}, true, nil
		}
		return NameRequest{}, false, err
	}
	r := NameRequest{Name: *name, JSON: c.json, Timeout: c.timeout}
	if force != nil {
		r.Force = *force
	}
	switch {
	case fs.NArg() == 1 && r.Name == "":
		r.Name = fs.Arg(0)
	case fs.NArg() > 0:
		return NameRequest{}, false, usagef(cmd, "unexpected arguments %q", fs.Args())
	}
	if err := CheckName(cmd, r.Name); err != nil {
		return NameRequest{}, false, err
	}
	return r, false, nil
}

// PromoteRequest is a parsed block.promote.
type PromoteRequest struct {
	Name, To string
	Force    bool
	JSON     bool
	Timeout  time.Duration
}

// ParsePromote parses block.promote's arguments.
func ParsePromote(args []string, out io.Writer) (PromoteRequest, bool, error) {
	const cmd = "block.promote"
	var c common
	fs := newFlagSet(cmd, &c)
	name := fs.String("name", "", "volume name")
	to := fs.String("to", "", "server id of the new primary (as block.status shows it)")
	force := fs.Bool("force", false, "skip the failover checks; writes not yet on the new primary may be lost")
	if err := parse(fs, helpOf(cmd), args, out); err != nil {
		if err == errHelp {
			return PromoteRequest{}, true, nil
		}
		return PromoteRequest{}, false, err
	}
	if fs.NArg() > 0 {
		return PromoteRequest{}, false, usagef(cmd, "unexpected arguments %q", fs.Args())
	}
	if err := CheckName(cmd, *name); err != nil {
		return PromoteRequest{}, false, err
	}
	if strings.TrimSpace(*to) == "" {
		return PromoteRequest{}, false, usagef(cmd, "-to is required (a server id from block.status -name=%s)", *name)
	}
	return PromoteRequest{Name: *name, To: strings.TrimSpace(*to), Force: *force, JSON: c.json, Timeout: c.timeout}, false, nil
}

// RepairRequest is a parsed block.repair.
type RepairRequest struct {
	Name    string
	Replica string // "" names every copy other than the primary
	Rebuild bool
	JSON    bool
	Timeout time.Duration
}

// ParseRepair parses block.repair's arguments.
func ParseRepair(args []string, out io.Writer) (RepairRequest, bool, error) {
	const cmd = "block.repair"
	var c common
	fs := newFlagSet(cmd, &c)
	name := fs.String("name", "", "volume name")
	replica := fs.String("replica", "", "server id of the copy to repair (as block.status shows it); default: every copy but the primary")
	rebuild := fs.Bool("rebuild", false, "rebuild in full, even a member in sync (it leaves the epoch until rebuilt)")
	if err := parse(fs, helpOf(cmd), args, out); err != nil {
		if err == errHelp {
			return RepairRequest{}, true, nil
		}
		return RepairRequest{}, false, err
	}
	if fs.NArg() > 0 {
		return RepairRequest{}, false, usagef(cmd, "unexpected arguments %q", fs.Args())
	}
	if err := CheckName(cmd, *name); err != nil {
		return RepairRequest{}, false, err
	}
	return RepairRequest{Name: *name, Replica: strings.TrimSpace(*replica), Rebuild: *rebuild, JSON: c.json, Timeout: c.timeout}, false, nil
}

// RepairView is block.repair's -json output.
type RepairView struct {
	Repairing []string   `json:"repairing"`
	InSync    []string   `json:"in_sync"`
	Rebuild   bool       `json:"rebuild"`
	Volume    VolumeView `json:"volume"`
}

// ListRequest is a parsed block.list.
type ListRequest struct {
	JSON    bool
	Timeout time.Duration
}

// ParseList parses block.list's arguments.
func ParseList(args []string, out io.Writer) (ListRequest, bool, error) {
	const cmd = "block.list"
	var c common
	fs := newFlagSet(cmd, &c)
	if err := parse(fs, helpOf(cmd), args, out); err != nil {
		if err == errHelp {
			return ListRequest{}, true, nil
		}
		return ListRequest{}, false, err
	}
	if fs.NArg() > 0 {
		return ListRequest{}, false, usagef(cmd, "unexpected arguments %q", fs.Args())
	}
	return ListRequest{JSON: c.json, Timeout: c.timeout}, false, nil
}

// Run runs block command cmd with args, printing to out. Errors are usage
// errors (wrapping ErrUsage: nothing was sent) or *Error (the master or
// the way to it refused).
func Run(ctx context.Context, env Env, cmd string, args []string, out io.Writer) error {
	switch cmd {
	case "block.create":
		req, help, err := ParseCreate(args, out)
		if help || err != nil {
			return err
		}
		var info *blockpb.VolumeInfo
		err = call(ctx, env, cmd, req.Spec.GetName(), req.Timeout, func(ctx context.Context, c blockpb.BlockMasterClient) error {
			resp, err := c.CreateVolume(ctx, &blockpb.CreateVolumeRequest{Spec: req.Spec})
			info = resp.GetVolume()
			return err
		})
		if err != nil {
			return err
		}
		v := NewVolumeView(info)
		if req.JSON {
			return writeJSON(out, v)
		}
		fmt.Fprintf(out, "created block volume %s: %s, rf=%d, durability %s, epoch %d, primary %s\n",
			v.Name, FormatSize(v.SizeBytes), v.ReplicationFactor, v.Durability, v.Epoch, orNone(v.Primary))
		return WriteStatus(out, v, now(env))
	case "block.list":
		req, help, err := ParseList(args, out)
		if help || err != nil {
			return err
		}
		var infos []*blockpb.VolumeInfo
		err = call(ctx, env, cmd, "", req.Timeout, func(ctx context.Context, c blockpb.BlockMasterClient) error {
			resp, err := c.ListVolumes(ctx, &blockpb.ListVolumesRequest{})
			infos = resp.GetVolumes()
			return err
		})
		if err != nil {
			return err
		}
		views := make([]VolumeView, 0, len(infos))
		for _, info := range infos {
			views = append(views, NewVolumeView(info))
		}
		if req.JSON {
			return writeJSON(out, struct {
				Volumes []VolumeView `json:"volumes"`
			}{views})
		}
		return WriteList(out, views)
	case "block.status":
		req, help, err := ParseStatus(args, out)
		if help || err != nil {
			return err
		}
		var info *blockpb.VolumeInfo
		err = call(ctx, env, cmd, req.Name, req.Timeout, func(ctx context.Context, c blockpb.BlockMasterClient) error {
			resp, err := c.LookupVolume(ctx, &blockpb.LookupVolumeRequest{Name: req.Name})
			info = resp.GetVolume()
			return err
		})
		if err != nil {
			return err
		}
		v := NewVolumeView(info)
		if req.JSON {
			return writeJSON(out, v)
		}
		return WriteStatus(out, v, now(env))
	case "block.promote":
		req, help, err := ParsePromote(args, out)
		if help || err != nil {
			return err
		}
		var info *blockpb.VolumeInfo
		err = call(ctx, env, cmd, req.Name, req.Timeout, func(ctx context.Context, c blockpb.BlockMasterClient) error {
			resp, err := c.PromoteVolume(ctx, &blockpb.PromoteVolumeRequest{Name: req.Name, ToServerId: req.To, Force: req.Force})
			info = resp.GetVolume()
			return err
		})
		if err != nil {
			return err
		}
		v := NewVolumeView(info)
		if req.JSON {
			return writeJSON(out, v)
		}
		fmt.Fprintf(out, "promoted %s to primary of %s in epoch %d\n", orNone(v.Primary), v.Name, v.Epoch)
		return WriteStatus(out, v, now(env))
	case "block.repair":
		req, help, err := ParseRepair(args, out)
		if help || err != nil {
			return err
		}
		var resp *blockpb.RepairVolumeResponse
		err = call(ctx, env, cmd, req.Name, req.Timeout, func(ctx context.Context, c blockpb.BlockMasterClient) error {
			var err error
			resp, err = c.RepairVolume(ctx, &blockpb.RepairVolumeRequest{Name: req.Name, ReplicaServerId: req.Replica, Rebuild: req.Rebuild})
			return err
		})
		if err != nil {
			return err
		}
		rv := RepairView{Repairing: append([]string{}, resp.GetRepairing()...), InSync: append([]string{}, resp.GetInSync()...),
			Rebuild: req.Rebuild, Volume: NewVolumeView(resp.GetVolume())}
		if req.JSON {
			return writeJSON(out, rv)
		}
		writeRepair(out, rv)
		return WriteStatus(out, rv.Volume, now(env))
	case "block.delete":
		req, help, err := ParseDelete(args, out)
		if help || err != nil {
			return err
		}
		err = call(ctx, env, cmd, req.Name, req.Timeout, func(ctx context.Context, c blockpb.BlockMasterClient) error {
			_, err := c.DeleteVolume(ctx, &blockpb.DeleteVolumeRequest{Name: req.Name, Force: req.Force})
			return err
		})
		if err != nil {
			return err
		}
		if req.JSON {
			return writeJSON(out, struct {
				Deleted string `json:"deleted"`
			}{req.Name})
		}
		_, err = fmt.Fprintf(out, "deleted block volume %s\n", req.Name)
		return err
	}
	return fmt.Errorf("unknown block command %q: %w", cmd, ErrUsage)
}

// writeRepair says what block.repair set in motion.
func writeRepair(out io.Writer, rv RepairView) {
	name := rv.Volume.Name
	if len(rv.Repairing) == 0 {
		fmt.Fprintf(out, "nothing to repair on %s: %s in sync with the primary %s (add -rebuild to rebuild anyway)\n",
			name, strings.Join(rv.InSync, ", "), orNone(rv.Volume.Primary))
		return
	}
	how := "planned again by the primary (catch-up, truncation or rebuild, whichever is cheapest and safe)"
	if rv.Rebuild {
		how = "rebuilt in full by the primary"
	}
	fmt.Fprintf(out, "repair of %s on %s requested: %s will be %s, then rejoin the epoch\n",
		name, strings.Join(rv.Repairing, ", "), plural(len(rv.Repairing), "it", "they"), how)
	if len(rv.InSync) > 0 {
		fmt.Fprintf(out, "left alone (members in sync): %s\n", strings.Join(rv.InSync, ", "))
	}
	fmt.Fprintf(out, "follow it with: block.status -name=%s\n", name)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func now(env Env) time.Time {
	if env.Now != nil {
		return env.Now()
	}
	return time.Now()
}

// call runs fn on the master leader within timeout, following one "not
// leader; leader is X" redirect, and rewrites the error for the operator.
func call(ctx context.Context, env Env, op, volume string, timeout time.Duration,
	fn func(context.Context, blockpb.BlockMasterClient) error) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	addr, err := env.Master(ctx)
	if err != nil {
		return fmt.Errorf("%s: find the master leader: %w", op, err)
	}
	if addr == "" {
		return &Error{Op: op, Volume: volume, Code: codes.Unavailable, Msg: "the shell is not connected to any master",
			Hint: "check weed shell -master="}
	}
	run := func(addr string) error {
		return env.Call(ctx, addr, func(c blockpb.BlockMasterClient) error { return fn(ctx, c) })
	}
	err = run(addr)
	if st, ok := status.FromError(err); ok && st.Code() == codes.FailedPrecondition && isNotLeader(st.Message()) {
		if leader := leaderFrom(st.Message()); leader != "" && leader != addr {
			addr = leader
			err = run(addr)
		}
	}
	return friendly(op, volume, addr, err)
}
