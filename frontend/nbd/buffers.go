package nbd

import (
	"math/bits"
	"sync"
)

// bufferPool hands out byte slices in power-of-two size classes so the hot
// path (every READ and WRITE payload) does not allocate.
type bufferPool struct {
	classes [32]sync.Pool // class k holds *[]byte of capacity 1<<k
}

const minBufferClass = 12 // 4 KiB

func bufferClass(n int) int {
	if n <= 1<<minBufferClass {
		return minBufferClass
	}
	return bits.Len(uint(n - 1))
}

// get returns a slice of length n. Release it with put.
func (p *bufferPool) get(n int) *[]byte {
	c := bufferClass(n)
	if c >= len(p.classes) {
		b := make([]byte, n)
		return &b
	}
	if v, ok := p.classes[c].Get().(*[]byte); ok {
		*v = (*v)[:n]
		return v
	}
	b := make([]byte, n, 1<<c)
	return &b
}

func (p *bufferPool) put(b *[]byte) {
	c := bits.Len(uint(cap(*b))) - 1
	if c < minBufferClass || c >= len(p.classes) || cap(*b) != 1<<c {
		return
	}
	p.classes[c].Put(b)
}
