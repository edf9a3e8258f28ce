package blockshell

import (
	"errors"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := []struct {
		in   string
		want uint64
	}{
		{"4096", 4096},
		{"512MiB", 512 << 20},
		{"512mib", 512 << 20},
		{"20GiB", 20 << 30},
		{"20 GiB", 20 << 30},
		{"1G", 1 << 30},
		{"1g", 1 << 30},
		{"1Gi", 1 << 30},
		{"256M", 256 << 20},
		{"64K", 64 << 10},
		{"2TiB", 2 << 40},
		{"1P", 1 << 50},
		{"1.5GiB", 3 << 29},
		{"0.5M", 512 << 10},
		{".5M", 512 << 10},
		{"10GB", 10e9},
		{"4kb", 4000},
		{"100b", 100},
		{"  8MiB ", 8 << 20},
		{"1.0G", 1 << 30},
		{"0", 0},
	}
	for _, tc := range good {
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	bad := []string{"", "big", "GiB", "1X", "1GiBB", "-1G", "1.2.3G", ".", "1.0000001B",
		"99999999999999999999", "16384P", "20000000000000000000b", "1e9", "0x10"}
	for _, in := range bad {
		got, err := ParseSize(in)
		if err == nil || !errors.Is(err, ErrBadSize) {
			t.Errorf("ParseSize(%q) = %d, %v; want an ErrBadSize error", in, got, err)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for in, want := range map[uint64]string{256 << 20: "256 MiB", 20 << 30: "20 GiB", 512: "512 B", 3 << 29: "1.5 GiB", 1 << 30: "1 GiB", 1536: "1.5 KiB", 1 << 50: "1 PiB"} {
		if got := FormatSize(in); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", in, got, want)
		}
	}
}
