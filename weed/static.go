package main

import (
	"embed"
	"io/fs"
)

// The upstream binary embeds its web assets (stylesheets, scripts, icons)
// for the master/volume/filer status pages. Go cannot embed files from
// another module, and we copy no upstream files, so we serve our own small
// asset tree under the same URL prefix; the status pages work but are
// unstyled. See docs/decisions.md.
//
//go:embed static
var staticFiles embed.FS

// staticFS returns the asset tree rooted at the static directory.
func staticFS() fs.FS {
	sub, err := fs.Sub(staticFiles, "static")
	if err != nil {
		// fs.Sub fails only for an invalid path; "static" is valid.
		return staticFiles
	}
	return sub
}
