package faultproxy

import (
	"fmt"
	"net"
	"sync"
	"time"
)

// Proxy forwards every connection accepted on its loopback address to a
// target address, with faults switched on and off at run time.
type Proxy struct {
	l      net.Listener
	target string

	mu        sync.Mutex
	cond      *sync.Cond // signalled when blackhole turns off or on close
	delay     time.Duration
	drop      bool
	blackhole bool
	closed    bool
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
}

// New listens on 127.0.0.1 (a free port) and forwards to target.
func New(target string) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{l: l, target: target, conns: make(map[net.Conn]struct{})}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address clients dial.
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// SetDelay delays every chunk forwarded in either direction by d.
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// SetDrop makes new connections close at once (true) or pass (false).
func (p *Proxy) SetDrop(on bool) {
	p.mu.Lock()
	p.drop = on
	p.mu.Unlock()
}

// SetBlackhole stops forwarding bytes (connections stay open, data is held
// back, nothing is read once the buffers fill) or resumes it.
func (p *Proxy) SetBlackhole(on bool) {
	p.mu.Lock()
	p.blackhole = on
	p.cond.Broadcast()
	p.mu.Unlock()
}

// Cut closes every proxied connection now. New ones are still accepted
// (unless SetDrop).
func (p *Proxy) Cut() {
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}

// Conns is the number of open proxied connection pairs.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns) / 2
}

// Close stops accepting, closes every connection and waits for the
// goroutines. Idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		p.l.Close()
		for c := range p.conns {
			c.Close()
		}
		p.cond.Broadcast()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.closed || p.drop {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.mu.Unlock()
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			s.Close()
			continue
		}
		p.conns[c] = struct{}{}
		p.conns[s] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(c, s)
		go p.pipe(s, c)
	}
}

// pipe copies src to dst chunk by chunk, honouring the faults; when either
// side ends, both close.
func (p *Proxy) pipe(src, dst net.Conn) {
	defer p.wg.Done()
	defer func() {
		src.Close()
		dst.Close()
		p.mu.Lock()
		delete(p.conns, src)
		delete(p.conns, dst)
		p.mu.Unlock()
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			_, live := p.conns[src]
			for p.blackhole && !p.closed && live {
				p.cond.Wait()
				_, live = p.conns[src]
			}
			closed, delay := p.closed, p.delay
			p.mu.Unlock()
			if closed || !live {
				return
			}
			if delay > 0 {
				time.Sleep(delay)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a closed connection: both sides close
		}
	}
}
