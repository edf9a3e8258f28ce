package engine

import (
	"testing"
	"time"
)

func TestLogBoundedPerReplica(t *testing.T) {
	var seen []Event
	clock := time.Unix(100, 0)
	l := NewLog(3, func() time.Time { return clock }, func(e Event) { seen = append(seen, e) })
	a, b := ReplicaID{"v", "a"}, ReplicaID{"v", "b"}
	kinds := []EventKind{EventPlanned, EventPinned, EventStep, EventEscalated, EventReleased, EventDone}
	for i, k := range kinds {
		l.Record(Event{Replica: a, Kind: k, LSN: uint64(i)})
	}
	l.Record(Event{Replica: b, Kind: EventPlanned})
	got := l.Events(a)
	if len(got) != 3 || got[0].Kind != EventEscalated || got[2].Kind != EventDone {
		t.Fatalf("replica a events %+v", got)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Seq <= got[i-1].Seq {
			t.Fatalf("seq not increasing: %+v", got)
		}
	}
	if !got[0].Time.Equal(clock) {
		t.Fatalf("time %v", got[0].Time)
	}
	if bs := l.Events(b); len(bs) != 1 || bs[0].Kind != EventPlanned {
		t.Fatalf("replica b events %+v", bs)
	}
	if len(seen) != 7 {
		t.Fatalf("sink saw %d events, want 7", len(seen))
	}
	got[0].Detail = "mutated"
	if l.Events(a)[0].Detail == "mutated" {
		t.Fatal("Events returned internal storage")
	}
	l.Forget(a)
	if len(l.Events(a)) != 0 {
		t.Fatal("forget kept events")
	}
	var nilLog *Log
	nilLog.Record(Event{}) // a nil log records nothing and does not fail
}
