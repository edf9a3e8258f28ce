package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/seaweedfs/seaweedfs/weed/command"
	"gopkg.in/yaml.v3"
)

// composeFile is the part of docker/docker-compose.yml the test checks.
type composeFile struct {
	Services map[string]struct {
		Build struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
		} `yaml:"build"`
		Image   string   `yaml:"image"`
		Command []string `yaml:"command"`
		Ports   []string `yaml:"ports"`
		Volumes []string `yaml:"volumes"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

const composeTestIP = "192.0.2.10" // TEST-NET-1: stands in for WEEDBLOCK_IP

// interpolate does compose's ${VAR:?msg} / ${VAR:-default} / ${VAR}
// substitution for the variables the file uses.
func interpolate(s string, env map[string]string) (string, error) {
	re := regexp.MustCompile(`\$\{([A-Z_]+)(?:(:\?|:-)([^}]*))?\}`)
	var err error
	out := re.ReplaceAllStringFunc(s, func(m string) string {
		p := re.FindStringSubmatch(m)
		if v, ok := env[p[1]]; ok && v != "" {
			return v
		}
		switch p[2] {
		case ":-":
			return p[3]
		case ":?":
			err = fmt.Errorf("%s unset: %s", p[1], p[3])
		}
		return ""
	})
	return out, err
}

// TestComposeFile validates docker/docker-compose.yml without a container
// engine: the YAML structure, that every service's command line parses
// with the real flag sets of our weed (upstream's plus the block flags),
// that each volume server publishes the ports its flags listen on (same
// number on the host) and points at the master, and that the Dockerfile
// builds ./weed from source. When `docker compose` is installed it must
// accept the file too.
func TestComposeFile(t *testing.T) {
	path := filepath.Join("..", "..", "docker", "docker-compose.yml")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := interpolate(string(raw), nil); err == nil || !strings.Contains(err.Error(), "WEEDBLOCK_IP") {
		t.Errorf("compose file without WEEDBLOCK_IP must fail with a message naming it, got %v", err)
	}
	text, err := interpolate(string(raw), map[string]string{"WEEDBLOCK_IP": composeTestIP})
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	if err := yaml.Unmarshal([]byte(text), &cf); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	want := []string{"master", "volume1", "volume2", "volume3"}
	if len(cf.Services) != len(want) {
		t.Errorf("services %d, want %v", len(cf.Services), want)
	}
	if err := Install(command.Commands, Hooks{}); err != nil {
		t.Fatal(err)
	}
	hostPorts := map[string]string{}
	var masterArg string
	for _, name := range want {
		svc, ok := cf.Services[name]
		if !ok {
			t.Fatalf("service %s missing", name)
		}
		if svc.Build.Context != ".." || svc.Build.Dockerfile != "docker/Dockerfile" {
			t.Errorf("%s: build %+v, want context .. and docker/Dockerfile", name, svc.Build)
		}
		if len(svc.Volumes) != 1 || !strings.HasSuffix(svc.Volumes[0], ":/data") {
			t.Errorf("%s: volumes %v, want one named volume on /data", name, svc.Volumes)
		} else if _, ok := cf.Volumes[strings.Split(svc.Volumes[0], ":")[0]]; !ok {
			t.Errorf("%s: volume %s not declared", name, svc.Volumes[0])
		}
		published := map[string]bool{}
		for _, p := range svc.Ports {
			hc := strings.Split(p, ":")
			if len(hc) != 2 || hc[0] != hc[1] {
				t.Errorf("%s: port %q: want the same host and container port", name, p)
				continue
			}
			if other, dup := hostPorts[hc[0]]; dup {
				t.Errorf("%s: host port %s also published by %s", name, hc[0], other)
			}
			hostPorts[hc[0]] = name
			published[hc[0]] = true
		}
		needPort := func(flagName, addr string) {
			t.Helper()
			i := strings.LastIndex(addr, ":")
			port := addr[i+1:]
			if !published[port] {
				t.Errorf("%s: -%s %s: port not published (%v)", name, flagName, addr, svc.Ports)
			}
		}
		if len(svc.Command) == 0 {
			t.Fatalf("%s: no command", name)
		}
		cmd := findCommand(t, svc.Command[0])
		if err := cmd.Flag.Parse(svc.Command[1:]); err != nil {
			t.Fatalf("%s: command %v does not parse: %v", name, svc.Command, err)
		}
		if cmd.Flag.NArg() != 0 {
			t.Errorf("%s: stray arguments %v", name, cmd.Flag.Args())
		}
		switch svc.Command[0] {
		case "master":
			mc, err := masterConfigFromFlags(&cmd.Flag)
			if err != nil {
				t.Fatal(err)
			}
			if mc.IP != composeTestIP || mc.BindIP != "0.0.0.0" || mc.Peers != "none" || mc.Telemetry {
				t.Errorf("master config %+v", mc)
			}
			needPort("port", fmt.Sprint(":", mc.Port))
			needPort("port.grpc", fmt.Sprint(":", mc.GrpcPort))
			masterArg = fmt.Sprintf("%s:%d.%d", composeTestIP, mc.Port, mc.GrpcPort)
		case "volume":
			vc, err := volumeConfigFromFlags(&cmd.Flag)
			if err != nil {
				t.Fatal(err)
			}
			if vc.IP != composeTestIP || vc.BindIP != "0.0.0.0" || vc.BlockDir == "" || vc.Rack == "" {
				t.Errorf("%s config %+v", name, vc)
			}
			if vc.Masters != masterArg {
				t.Errorf("%s: -master=%s, want the master service %s", name, vc.Masters, masterArg)
			}
			needPort("port", fmt.Sprint(":", vc.Port))
			needPort("port.grpc", fmt.Sprint(":", vc.GrpcPort))
			needPort(flagBlockNBD, vc.BlockNBD)
			needPort(flagBlockISCSI, vc.BlockISCSI)
			needPort(flagBlockRepl, vc.BlockRepl)
		default:
			t.Errorf("%s: unexpected command %q", name, svc.Command[0])
		}
	}

	df, err := os.ReadFile(filepath.Join("..", "..", "docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	goMod, err := os.ReadFile(filepath.Join("..", "..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVer := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(goMod)
	if goVer == nil {
		t.Fatal("go.mod: no go directive")
	}
	for _, need := range []string{"FROM golang:" + string(goVer[1]) + "-", "go build", "./weed", "-slim", "COPY --from=build"} {
		if !strings.Contains(string(df), need) {
			t.Errorf("Dockerfile lacks %q", need)
		}
	}

	if exec.Command("docker", "compose", "version").Run() == nil {
		c := exec.Command("docker", "compose", "-f", path, "config", "-q")
		c.Env = append(os.Environ(), "WEEDBLOCK_IP="+composeTestIP)
		if out, err := c.CombinedOutput(); err != nil {
			t.Errorf("docker compose config: %v\n%s", err, out)
		}
	}
}
