package nbd

import (
	"flag"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// Keep glog on stderr (shown for failing tests) instead of files in
	// the system temp directory.
	flag.Parse()
	if err := flag.Set("logtostderr", "true"); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}
