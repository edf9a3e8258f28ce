package faultfs

// pageSize is the allocation unit of an image. Holes (never written or
// punched) hold no page and read as zeros.
const pageSize = 4096

// image is the content of one file: a size and a sparse set of pages.
type image struct {
	size  int64
	pages map[int64]*[pageSize]byte
}

func newImage() *image {
	return &image{pages: make(map[int64]*[pageSize]byte)}
}

func (im *image) clone() *image {
	c := &image{size: im.size, pages: make(map[int64]*[pageSize]byte, len(im.pages))}
	for k, pg := range im.pages {
		cp := *pg
		c.pages[k] = &cp
	}
	return c
}

// readAt copies the bytes of [off, off+len(p)) that lie below the size into p
// and returns how many it copied.
func (im *image) readAt(p []byte, off int64) int {
	if off >= im.size {
		return 0
	}
	n := len(p)
	if rest := im.size - off; int64(n) > rest {
		n = int(rest)
	}
	for done := 0; done < n; {
		pos := off + int64(done)
		idx, in := pos/pageSize, int(pos%pageSize)
		chunk := min(pageSize-in, n-done)
		if pg := im.pages[idx]; pg != nil {
			copy(p[done:done+chunk], pg[in:in+chunk])
		} else {
			clear(p[done : done+chunk])
		}
		done += chunk
	}
	return n
}

// write stores p at off, growing the size if it reaches past the end.
func (im *image) write(p []byte, off int64) {
	for done := 0; done < len(p); {
		pos := off + int64(done)
		idx, in := pos/pageSize, int(pos%pageSize)
		chunk := min(pageSize-in, len(p)-done)
		pg := im.pages[idx]
		if pg == nil {
			pg = new([pageSize]byte)
			im.pages[idx] = pg
		}
		copy(pg[in:in+chunk], p[done:done+chunk])
		done += chunk
	}
	if end := off + int64(len(p)); end > im.size {
		im.size = end
	}
}

// zero makes [off, off+length) ∩ [0, size) read as zeros, dropping pages it
// covers completely. The size does not change.
func (im *image) zero(off, length int64) {
	end := min(off+length, im.size)
	if off < 0 {
		off = 0
	}
	for pos := off; pos < end; {
		idx, in := pos/pageSize, pos%pageSize
		chunk := min(pageSize-in, end-pos)
		if chunk == pageSize {
			delete(im.pages, idx)
		} else if pg := im.pages[idx]; pg != nil {
			clear(pg[in : in+chunk])
		}
		pos += chunk
	}
}

// truncate sets the size; bytes past a shrunk end are gone, so growing again
// exposes zeros.
func (im *image) truncate(size int64) {
	if size < im.size {
		im.zero(size, im.size-size)
		// Pages wholly past the new end are gone; a partial last page was
		// zeroed past the end by zero above.
		for idx := range im.pages {
			if idx*pageSize >= size {
				delete(im.pages, idx)
			}
		}
	}
	im.size = size
}
