package blockmaster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/weedblock/weedblock/weed/pb/blockpb"
)

// registryFile is the name of the registry inside <Dir>/block/.
const registryFile = "registry.json"

// registryTempPrefix starts the names of the temporary files a write goes
// through; leftovers (a crash before the rename) are removed at load.
const registryTempPrefix = registryFile + ".tmp-"

// registryFormat is the on-disk format version.
const registryFormat = 1

// maxHistory bounds how many older epochs a volume keeps.
const maxHistory = 16

// ErrStaleEpoch is returned when a configuration would not raise a volume's
// epoch: epochs only ever go forward.
var ErrStaleEpoch = errors.New("blockmaster: epoch does not advance")

// ErrCorruptRegistry is returned by a load that finds a registry file it
// cannot trust. The master refuses to start rather than forget its volumes,
// their epochs and the tombstones.
var ErrCorruptRegistry = errors.New("blockmaster: corrupt registry")

// volumeRecord is the durable part of one volume.
type volumeRecord struct {
	spec    *blockpb.VolumeSpec
	config  *blockpb.EpochConfig
	history []*blockpb.EpochConfig
	// firstEpoch is the epoch this incarnation of the name was created in;
	// a file of the same name reporting an older epoch is a leftover of a
	// deleted incarnation.
	firstEpoch    uint64
	createdUnixMs int64
	// failovers counts the epochs made by promoting another server
	// (automatic failover or PromoteVolume).
	failovers uint64
	// homes are the servers placed to hold a copy of this incarnation:
	// every server that was a member of any of its epochs, sorted. A home
	// that lost its copy gets an empty recovery copy to be rebuilt; no
	// other server ever does (the master never invents a placement).
	homes []string
	// repairs are the operator's repair requests per server (block.repair):
	// the forced-rebuild flag (cleared when the copy rejoins) and the
	// repair sequence (only ever grows).
	repairs map[string]repairMark
}

// repairMark is the durable state of block.repair for one copy.
type repairMark struct {
	Rebuild bool   `json:"rebuild,omitempty"`
	Seq     uint64 `json:"seq"`
}

// isHome reports whether server id is one of the volume's placements.
func (r *volumeRecord) isHome(id string) bool {
	i := sort.SearchStrings(r.homes, id)
	return i < len(r.homes) && r.homes[i] == id
}

// addHomes adds the members of cfg to the homes.
func (r *volumeRecord) addHomes(cfg *blockpb.EpochConfig) {
	for _, mem := range cfg.GetMembers() {
		id := mem.GetServer().GetServerId()
		if id != "" && !r.isHome(id) {
			r.homes = append(r.homes, id)
			sort.Strings(r.homes)
		}
	}
}

func (r *volumeRecord) clone() *volumeRecord {
	c := &volumeRecord{
		spec:          proto.Clone(r.spec).(*blockpb.VolumeSpec),
		config:        proto.Clone(r.config).(*blockpb.EpochConfig),
		firstEpoch:    r.firstEpoch,
		createdUnixMs: r.createdUnixMs,
		failovers:     r.failovers,
		homes:         append([]string(nil), r.homes...),
	}
	for _, h := range r.history {
		c.history = append(c.history, proto.Clone(h).(*blockpb.EpochConfig))
	}
	if len(r.repairs) > 0 {
		c.repairs = make(map[string]repairMark, len(r.repairs))
		for id, mk := range r.repairs {
			c.repairs[id] = mk
		}
	}
	return c
}

// registry is the master's durable list of volumes, persisted as one JSON
// file under <dir>. Every mutation is written (temp file, fsync, rename,
// directory fsync) before it is applied in memory, so what the master has
// said to anyone is always on disk. It is not safe for concurrent use: the
// Master serializes calls with its mutex.
type registry struct {
	dir     string
	volumes map[string]*volumeRecord
	// tombstones remember the last epoch of deleted names, so a name
	// created again continues above it and epochs never go backwards.
	tombstones map[string]uint64
	// byServer indexes the volumes whose current config lists a server
	// (server id -> names), so a heartbeat costs its own volumes only.
	byServer map[string]map[string]struct{}
	// byHome indexes the volumes that have a server among their homes.
	byHome map[string]map[string]struct{}
}

func (r *registry) indexAdd(rec *volumeRecord) {
	for _, mem := range rec.config.GetMembers() {
		id := mem.GetServer().GetServerId()
		if r.byServer[id] == nil {
			r.byServer[id] = map[string]struct{}{}
		}
		r.byServer[id][rec.spec.GetName()] = struct{}{}
	}
	for _, id := range rec.homes {
		if r.byHome[id] == nil {
			r.byHome[id] = map[string]struct{}{}
		}
		r.byHome[id][rec.spec.GetName()] = struct{}{}
	}
}

func (r *registry) indexRemove(rec *volumeRecord) {
	for _, mem := range rec.config.GetMembers() {
		id := mem.GetServer().GetServerId()
		delete(r.byServer[id], rec.spec.GetName())
		if len(r.byServer[id]) == 0 {
			delete(r.byServer, id)
		}
	}
	for _, id := range rec.homes {
		delete(r.byHome[id], rec.spec.GetName())
		if len(r.byHome[id]) == 0 {
			delete(r.byHome, id)
		}
	}
}

// homesOf returns the volumes that have server id among their homes.
func (r *registry) homesOf(id string) map[string]struct{} { return r.byHome[id] }

// namesOf returns the volumes whose current config lists server id.
func (r *registry) namesOf(id string) []string {
	out := make([]string, 0, len(r.byServer[id]))
	for n := range r.byServer[id] {
		out = append(out, n)
	}
	return out
}

func newRegistry(dir string) *registry {
	return &registry{dir: dir, volumes: map[string]*volumeRecord{}, tombstones: map[string]uint64{},
		byServer: map[string]map[string]struct{}{}, byHome: map[string]map[string]struct{}{}}
}

// diskRegistry is the JSON shape of the registry file. Protobuf messages are
// embedded in their canonical JSON form so an operator can read the file.
type diskRegistry struct {
	Format     int               `json:"format"`
	Volumes    []diskVolume      `json:"volumes"`
	Tombstones map[string]uint64 `json:"tombstones,omitempty"`
}

type diskVolume struct {
	Spec          json.RawMessage   `json:"spec"`
	Config        json.RawMessage   `json:"config"`
	History       []json.RawMessage `json:"history,omitempty"`
	FirstEpoch    uint64            `json:"first_epoch"`
	CreatedUnixMs int64             `json:"created_unix_ms"`
	Failovers     uint64            `json:"failovers,omitempty"`
	// Homes and Repairs: see volumeRecord. A registry written before they
	// existed loads with the homes taken from the config and history.
	Homes   []string              `json:"homes,omitempty"`
	Repairs map[string]repairMark `json:"repairs,omitempty"`
}

// loadRegistry opens the registry under dir (creating dir if needed),
// removes leftover temporary files and reads the registry file; a missing
// file is an empty registry, an unreadable one is an error.
func loadRegistry(dir string) (*registry, error) {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("registry dir %s: %w", dir, err)
		}
		// Make the new directory's entry durable, or a crash could lose
		// the directory with every registry written into it.
		if err := syncDir(filepath.Dir(dir)); err != nil {
			return nil, fmt.Errorf("registry dir %s: %w", dir, err)
		}
	}
	r := newRegistry(dir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("registry dir %s: %w", dir, err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), registryTempPrefix) {
			p := filepath.Join(dir, e.Name())
			if err := os.Remove(p); err != nil {
				return nil, fmt.Errorf("remove leftover %s: %w", p, err)
			}
		}
	}
	path := filepath.Join(dir, registryFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read registry %s: %w", path, err)
	}
	if err := r.decode(data); err != nil {
		return nil, fmt.Errorf("load registry %s: %w", path, err)
	}
	return r, nil
}

func (r *registry) decode(data []byte) error {
	var d diskRegistry
	if err := json.Unmarshal(data, &d); err != nil {
		return fmt.Errorf("%w: %v", ErrCorruptRegistry, err)
	}
	if d.Format != registryFormat {
		return fmt.Errorf("%w: format %d, this master reads %d", ErrCorruptRegistry, d.Format, registryFormat)
	}
	for name, e := range d.Tombstones {
		if !validName(name) {
			return fmt.Errorf("%w: tombstone with bad name %q", ErrCorruptRegistry, name)
		}
		r.tombstones[name] = e
	}
	for i, dv := range d.Volumes {
		rec := &volumeRecord{firstEpoch: dv.FirstEpoch, createdUnixMs: dv.CreatedUnixMs, failovers: dv.Failovers}
		for _, id := range dv.Homes {
			if id == "" {
				return fmt.Errorf("%w: volume %d has an empty home", ErrCorruptRegistry, i)
			}
			if !rec.isHome(id) {
				rec.homes = append(rec.homes, id)
				sort.Strings(rec.homes)
			}
		}
		for id, mk := range dv.Repairs {
			if id == "" {
				return fmt.Errorf("%w: volume %d has a repair of an empty server id", ErrCorruptRegistry, i)
			}
			if rec.repairs == nil {
				rec.repairs = map[string]repairMark{}
			}
			rec.repairs[id] = mk
		}
		rec.spec = &blockpb.VolumeSpec{}
		if err := protojson.Unmarshal(dv.Spec, rec.spec); err != nil {
			return fmt.Errorf("%w: volume %d spec: %v", ErrCorruptRegistry, i, err)
		}
		rec.config = &blockpb.EpochConfig{}
		if err := protojson.Unmarshal(dv.Config, rec.config); err != nil {
			return fmt.Errorf("%w: volume %q config: %v", ErrCorruptRegistry, rec.spec.GetName(), err)
		}
		for j, h := range dv.History {
			hc := &blockpb.EpochConfig{}
			if err := protojson.Unmarshal(h, hc); err != nil {
				return fmt.Errorf("%w: volume %q history %d: %v", ErrCorruptRegistry, rec.spec.GetName(), j, err)
			}
			rec.history = append(rec.history, hc)
		}
		rec.addHomes(rec.config)
		for _, h := range rec.history {
			rec.addHomes(h)
		}
		name := rec.spec.GetName()
		switch {
		case !validName(name):
			return fmt.Errorf("%w: volume %d has bad name %q", ErrCorruptRegistry, i, name)
		case r.volumes[name] != nil:
			return fmt.Errorf("%w: volume %q listed twice", ErrCorruptRegistry, name)
		case rec.config.GetEpoch() == 0 || rec.firstEpoch == 0 || rec.firstEpoch > rec.config.GetEpoch():
			return fmt.Errorf("%w: volume %q epoch %d (first %d)", ErrCorruptRegistry, name, rec.config.GetEpoch(), rec.firstEpoch)
		case rec.config.GetEpoch() <= r.tombstones[name]:
			return fmt.Errorf("%w: volume %q epoch %d not above its tombstone %d", ErrCorruptRegistry, name, rec.config.GetEpoch(), r.tombstones[name])
		}
		r.volumes[name] = rec
		r.indexAdd(rec)
	}
	return nil
}

func (r *registry) encode() ([]byte, error) {
	d := diskRegistry{Format: registryFormat, Volumes: []diskVolume{}}
	if len(r.tombstones) > 0 {
		d.Tombstones = r.tombstones
	}
	for _, name := range r.names() {
		rec := r.volumes[name]
		dv := diskVolume{FirstEpoch: rec.firstEpoch, CreatedUnixMs: rec.createdUnixMs, Failovers: rec.failovers,
			Homes: rec.homes, Repairs: rec.repairs}
		var err error
		if dv.Spec, err = protojson.Marshal(rec.spec); err != nil {
			return nil, fmt.Errorf("encode %q spec: %w", name, err)
		}
		if dv.Config, err = protojson.Marshal(rec.config); err != nil {
			return nil, fmt.Errorf("encode %q config: %w", name, err)
		}
		for _, h := range rec.history {
			b, err := protojson.Marshal(h)
			if err != nil {
				return nil, fmt.Errorf("encode %q history: %w", name, err)
			}
			dv.History = append(dv.History, b)
		}
		d.Volumes = append(d.Volumes, dv)
	}
	return json.MarshalIndent(&d, "", "  ")
}

// names returns the registered names, sorted.
func (r *registry) names() []string {
	out := make([]string, 0, len(r.volumes))
	for n := range r.volumes {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (r *registry) get(name string) *volumeRecord { return r.volumes[name] }

// nextFirstEpoch is the epoch a new volume called name starts in: above
// anything an earlier volume of that name ever had.
func (r *registry) nextFirstEpoch(name string) uint64 { return r.tombstones[name] + 1 }

// add persists a new volume. On error nothing changed.
func (r *registry) add(rec *volumeRecord) error {
	name := rec.spec.GetName()
	if r.volumes[name] != nil {
		return fmt.Errorf("volume %q already registered", name)
	}
	if rec.config.GetEpoch() <= r.tombstones[name] {
		return fmt.Errorf("volume %q epoch %d: %w (deleted volume had %d)", name, rec.config.GetEpoch(), ErrStaleEpoch, r.tombstones[name])
	}
	rec.addHomes(rec.config)
	r.volumes[name] = rec
	if err := r.save(); err != nil {
		delete(r.volumes, name)
		return err
	}
	r.indexAdd(rec)
	return nil
}

// setConfig persists a new epoch of an existing volume; the epoch must be
// higher than the current one. The old config moves to the history.
func (r *registry) setConfig(name string, cfg *blockpb.EpochConfig) error {
	return r.advance(name, cfg, false)
}

// advance is setConfig that also counts a failover when failover is set
// (in the same durable write).
func (r *registry) advance(name string, cfg *blockpb.EpochConfig, failover bool) error {
	return r.update(name, cfg, failover, nil)
}

// update persists a change of an existing volume in one durable write: a
// new epoch cfg (nil: the epoch stays; else it must be higher than the
// current one, and the old config moves to the history), a failover
// counted when failover is set, and whatever mutate changes in the other
// durable fields (repairs). On error nothing changed.
func (r *registry) update(name string, cfg *blockpb.EpochConfig, failover bool, mutate func(*volumeRecord)) error {
	old := r.volumes[name]
	if old == nil {
		return fmt.Errorf("volume %q not registered", name)
	}
	if cfg != nil && cfg.GetEpoch() <= old.config.GetEpoch() {
		return fmt.Errorf("volume %q epoch %d after %d: %w", name, cfg.GetEpoch(), old.config.GetEpoch(), ErrStaleEpoch)
	}
	next := old.clone()
	if cfg != nil {
		next.history = append(next.history, next.config)
		if len(next.history) > maxHistory {
			next.history = next.history[len(next.history)-maxHistory:]
		}
		next.config = proto.Clone(cfg).(*blockpb.EpochConfig)
		next.addHomes(next.config)
	}
	if failover {
		next.failovers++
	}
	if mutate != nil {
		mutate(next)
	}
	r.volumes[name] = next
	if err := r.save(); err != nil {
		r.volumes[name] = old
		return err
	}
	r.indexRemove(old)
	r.indexAdd(next)
	return nil
}

// remove persists the deletion of a volume, leaving a tombstone with its
// last epoch.
func (r *registry) remove(name string) error {
	old := r.volumes[name]
	if old == nil {
		return fmt.Errorf("volume %q not registered", name)
	}
	prevTomb, hadTomb := r.tombstones[name]
	delete(r.volumes, name)
	r.tombstones[name] = old.config.GetEpoch()
	if err := r.save(); err != nil {
		r.volumes[name] = old
		if hadTomb {
			r.tombstones[name] = prevTomb
		} else {
			delete(r.tombstones, name)
		}
		return err
	}
	r.indexRemove(old)
	return nil
}

// save writes the whole registry crash-safely: a temporary file in the same
// directory, fsync, rename over the registry, fsync of the directory. A crash
// at any point leaves either the old or the new registry, never a mix.
func (r *registry) save() error {
	data, err := r.encode()
	if err != nil {
		return fmt.Errorf("save registry: %w", err)
	}
	return writeFileDurably(r.dir, registryFile, registryTempPrefix, data)
}

func writeFileDurably(dir, name, tempPrefix string, data []byte) error {
	f, err := os.CreateTemp(dir, tempPrefix+"*")
	if err != nil {
		return fmt.Errorf("save %s: %w", name, err)
	}
	tmp := f.Name()
	fail := func(step string, err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("save %s: %s %s: %w", name, step, tmp, err)
	}
	if _, err := f.Write(data); err != nil {
		return fail("write", err)
	}
	if err := f.Sync(); err != nil {
		return fail("fsync", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save %s: close %s: %w", name, tmp, err)
	}
	final := filepath.Join(dir, name)
	if err := os.Rename(tmp, final); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save %s: rename: %w", name, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("save %s: %w", name, err)
	}
	return nil
}

// syncDir fsyncs a directory, making the entries created or renamed in it
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}
