package blockmaster

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
)

func TestPlace(t *testing.T) {
	c := func(id, rack string, free uint64) candidate {
		return candidate{ID: id, DataCenter: "dc1", Rack: rack, FreeBytes: free}
	}
	cases := []struct {
		name  string
		cands []candidate
		rf    int
		need  uint64
		want  string // chosen IDs, primary first
		code  codes.Code
		msg   string
	}{
		{name: "most free first", cands: []candidate{c("a", "r1", 10), c("b", "r2", 30), c("c", "r3", 20)}, rf: 1, need: 5, want: "b"},
		{name: "distinct servers by free space", cands: []candidate{c("a", "r1", 10), c("b", "r2", 30), c("c", "r3", 20)}, rf: 3, need: 5, want: "b,c,a"},
		{name: "racks preferred over free space",
			cands: []candidate{c("a", "r1", 100), c("b", "r1", 90), c("c", "r2", 10), c("d", "r3", 5)}, rf: 3, need: 5, want: "a,c,d"},
		{name: "racks shared when there are too few",
			cands: []candidate{c("a", "r1", 100), c("b", "r1", 90), c("c", "r2", 10)}, rf: 3, need: 5, want: "a,c,b"},
		{name: "same rack name in another dc is another rack",
			cands: []candidate{{ID: "a", DataCenter: "dc1", Rack: "r1", FreeBytes: 100}, {ID: "b", DataCenter: "dc1", Rack: "r1", FreeBytes: 90}, {ID: "c", DataCenter: "dc2", Rack: "r1", FreeBytes: 10}},
			rf:    2, need: 5, want: "a,c"},
		{name: "one rack, distinct servers", cands: []candidate{c("a", "", 10), c("b", "", 20)}, rf: 2, need: 5, want: "b,a"},
		{name: "ties break on id", cands: []candidate{c("b", "r1", 10), c("a", "r2", 10), c("c", "r3", 10)}, rf: 2, need: 5, want: "a,b"},
		{name: "too full servers skipped", cands: []candidate{c("a", "r1", 4), c("b", "r2", 5), c("c", "r3", 6)}, rf: 2, need: 5, want: "c,b"},
		{name: "not enough servers", cands: []candidate{c("a", "r1", 100)}, rf: 2, need: 5,
			code: codes.FailedPrecondition, msg: "not enough block servers: rf=2 needs 2, 1 alive (a)"},
		{name: "no servers", cands: nil, rf: 1, need: 5, code: codes.FailedPrecondition, msg: "0 alive"},
		{name: "not enough space", cands: []candidate{c("a", "r1", 100), c("b", "r2", 4), c("c", "r3", 3)}, rf: 2, need: 5,
			code: codes.ResourceExhausted, msg: "rf=2 needs 2 servers with 5 bytes free, 1 of 3 alive servers have it (a)"},
		{name: "duplicate ids are one server", cands: []candidate{c("a", "r1", 100), c("a", "r2", 100)}, rf: 2, need: 5,
			code: codes.FailedPrecondition, msg: "distinct"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := place(tc.cands, tc.rf, tc.need)
			if tc.code != codes.OK {
				wantCode(t, err, tc.code, tc.msg)
				return
			}
			if err != nil {
				t.Fatalf("place: %v", err)
			}
			ids := make([]string, len(got))
			for i, g := range got {
				ids[i] = g.ID
			}
			if s := strings.Join(ids, ","); s != tc.want {
				t.Fatalf("placed on %s, want %s", s, tc.want)
			}
		})
	}
}

func TestAdvertised(t *testing.T) {
	cases := []struct{ addr, grpc, want string }{
		{"10.0.0.5:10809", "10.0.0.9:18080", "10.0.0.5:10809"},
		{"0.0.0.0:10809", "10.0.0.9:18080", "10.0.0.9:10809"},
		{":10809", "10.0.0.9:18080", "10.0.0.9:10809"},
		{"[::]:3260", "[fd00::1]:18080", "[fd00::1]:3260"},
		{"host.example:3260", "10.0.0.9:18080", "host.example:3260"},
		{"0.0.0.0:10809", "", "0.0.0.0:10809"},
		{"", "10.0.0.9:18080", ""},
		{"garbage", "10.0.0.9:18080", "garbage"},
	}
	for _, c := range cases {
		if got := advertised(c.addr, c.grpc); got != c.want {
			t.Errorf("advertised(%q, %q) = %q, want %q", c.addr, c.grpc, got, c.want)
		}
	}
}
