package replication

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/weedblock/weedblock/blockvol"
)

// ErrConnClosed: the connection was closed locally.
var ErrConnClosed = errors.New("replication: connection closed")

// Progress is what a replica has reported on one connection.
type Progress struct {
	Applied   uint64    // highest LSN the replica appended (ack)
	Durable   uint64    // highest LSN the replica reported durable (barrier ack)
	Barrier   uint64    // LSN of the latest barrier answered
	LastHeard time.Time // when the replica last sent a frame
}

// Conn is the sending side of one replication connection for one volume
// at one epoch. Records and barriers go out in order through a buffered
// writer (call Flush to push them); one goroutine reads the replica's
// acks, barrier answers and refusals. Safe for concurrent use.
type Conn struct {
	c     net.Conn
	raw   syscall.RawConn // nil unless c is a plain socket (TryBarrier)
	epoch uint64
	hello helloOKMsg

	wmu  sync.Mutex
	bw   *bufio.Writer
	rhdr [recordFixed]byte

	mu       sync.Mutex
	prog     Progress
	err      error         // sticky: first failure
	changed  chan struct{} // closed and replaced on every progress or failure
	done     chan struct{} // closed when the reader exits
	onChange func(*Conn)
}

// DialOptions tune Dial.
type DialOptions struct {
	// Dialer opens the TCP connection; nil means a net.Dialer.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// HelloTimeout bounds the hello exchange; 0 means 10 s.
	HelloTimeout time.Duration
	// OnChange, if set, is called (from the reader goroutine, with no lock
	// held) after every progress report and after the connection fails.
	OnChange func(*Conn)
}

// Dial connects to a replica server, says hello for volume at epoch and
// returns the connection with the replica's head and durable LSN. A
// refusal is a *RemoteError (errors.Is ErrStaleEpoch, ErrEpochAhead, ...).
func Dial(ctx context.Context, addr, volume string, epoch uint64, o DialOptions) (*Conn, error) {
	if o.HelloTimeout <= 0 {
		o.HelloTimeout = helloTimeout
	}
	c, fr, ok, err := dialHello(ctx, addr, volume, epoch, o, true)
	var re *RemoteError
	if errors.As(err, &re) && re.Code == codeProtocol {
		// An older replica refuses a hello asking for the head epoch:
		// say it again without (the head epoch is then unknown).
		c, fr, ok, err = dialHello(ctx, addr, volume, epoch, o, false)
	}
	if err != nil {
		return nil, err
	}
	cn := &Conn{
		c: c, epoch: epoch, hello: ok,
		bw:       bufio.NewWriterSize(c, 256<<10),
		changed:  make(chan struct{}),
		done:     make(chan struct{}),
		onChange: o.OnChange,
	}
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			cn.raw = raw
		}
	}
	cn.prog.Applied = ok.Head
	cn.prog.Durable = ok.Durable
	cn.prog.LastHeard = time.Now()
	go cn.read(fr)
	return cn, nil
}

// dialHello opens a connection and exchanges the hello (asking for the
// replica's head epoch when wantHeadEpoch).
func dialHello(ctx context.Context, addr, volume string, epoch uint64, o DialOptions, wantHeadEpoch bool) (net.Conn, *frameReader, helloOKMsg, error) {
	dial := o.Dialer
	if dial == nil {
		var d net.Dialer
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	c, err := dial(ctx, addr)
	if err != nil {
		return nil, nil, helloOKMsg{}, fmt.Errorf("replication: dial %s for %s: %w", addr, volume, err)
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	deadline := time.Now().Add(o.HelloTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (net.Conn, *frameReader, helloOKMsg, error) {
		stop()
		c.Close()
		return nil, nil, helloOKMsg{}, fmt.Errorf("replication: hello %s at %s epoch %d: %w", volume, addr, epoch, err)
	}
	if err := writeFrame(c, typeHello, encodeHello(helloMsg{Epoch: epoch, Volume: volume, WantHeadEpoch: wantHeadEpoch})); err != nil {
		return fail(err)
	}
	br := bufio.NewReaderSize(c, 64<<10)
	fr := newFrameReader(br)
	t, p, err := fr.next()
	if err != nil {
		return fail(err)
	}
	var ok helloOKMsg
	switch t {
	case typeHelloOK:
		if ok, err = decodeHelloOK(p); err != nil {
			return fail(err)
		}
	case typeError:
		m, err := decodeError(p)
		if err != nil {
			return fail(err)
		}
		return fail(&RemoteError{Code: m.Code, Msg: m.Msg})
	default:
		return fail(fmt.Errorf("%w: expected hello-ok, got %v", ErrBadFrame, t))
	}
	if !stop() {
		return fail(ctx.Err())
	}
	c.SetDeadline(time.Time{})
	return c, fr, ok, nil
}

// Epoch is the epoch the connection sends with.
func (cn *Conn) Epoch() uint64 { return cn.epoch }

// ReplicaHead and ReplicaDurable are the replica's position at hello.
func (cn *Conn) ReplicaHead() uint64 { return cn.hello.Head }

// ReplicaDurable is the replica's durable LSN at hello.
func (cn *Conn) ReplicaDurable() uint64 { return cn.hello.Durable }

// ReplicaHeadEpoch is the epoch of the replica's record at ReplicaHead,
// from its term history; ok is false when the replica did not know it or
// did not say (an older replica).
func (cn *Conn) ReplicaHeadEpoch() (epoch uint64, ok bool) {
	return cn.hello.HeadEpoch, cn.hello.HeadEpochKnown
}

func (cn *Conn) read(fr *frameReader) {
	defer close(cn.done)
	for {
		t, p, err := fr.next()
		if err == nil {
			err = cn.handle(t, p)
		}
		if err != nil {
			cn.fail(err)
			return
		}
		if cn.onChange != nil {
			cn.onChange(cn)
		}
	}
}

func (cn *Conn) handle(t frameType, p []byte) error {
	switch t {
	case typeAck:
		a, err := decodeAck(p)
		if err != nil {
			return err
		}
		cn.update(func(pr *Progress) {
			if a > pr.Applied {
				pr.Applied = a
			}
		})
	case typeBarrierAck:
		m, err := decodeBarrierAck(p)
		if err != nil {
			return err
		}
		cn.update(func(pr *Progress) {
			if m.Durable > pr.Durable {
				pr.Durable = m.Durable
			}
			if m.Durable > pr.Applied {
				pr.Applied = m.Durable
			}
			if m.LSN > pr.Barrier {
				pr.Barrier = m.LSN
			}
		})
	case typeError:
		m, err := decodeError(p)
		if err != nil {
			return err
		}
		return &RemoteError{Code: m.Code, Msg: m.Msg}
	default:
		return fmt.Errorf("%w: unexpected %v from replica", ErrBadFrame, t)
	}
	return nil
}

func (cn *Conn) update(f func(*Progress)) {
	cn.mu.Lock()
	f(&cn.prog)
	cn.prog.LastHeard = time.Now()
	close(cn.changed)
	cn.changed = make(chan struct{})
	cn.mu.Unlock()
}

func (cn *Conn) fail(err error) {
	cn.mu.Lock()
	first := cn.err == nil
	if first {
		cn.err = err
		close(cn.changed)
		cn.changed = make(chan struct{})
	}
	cn.mu.Unlock()
	cn.c.Close()
	if first && cn.onChange != nil {
		cn.onChange(cn)
	}
}

// Err is the error that ended the connection, nil while it is up.
func (cn *Conn) Err() error {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.err
}

// Progress is the replica's latest report.
func (cn *Conn) Progress() Progress {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.prog
}

// Send queues one record. It may block on the network (TCP back-pressure).
func (cn *Conn) Send(r blockvol.Record) error {
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	if err := cn.Err(); err != nil {
		return err
	}
	hdr := encodeRecordHeader(cn.rhdr[:], cn.epoch, &r)
	if err := writeFrame(cn.bw, typeRecord, hdr, r.Data); err != nil {
		cn.fail(err)
		return cn.Err()
	}
	return nil
}

// Barrier queues a barrier for lsn and pushes everything buffered.
func (cn *Conn) Barrier(lsn uint64) error {
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	if err := cn.Err(); err != nil {
		return err
	}
	if err := writeFrame(cn.bw, typeBarrier, encodeBarrier(barrierMsg{Epoch: cn.epoch, LSN: lsn})); err != nil {
		cn.fail(err)
		return cn.Err()
	}
	return cn.flushLocked()
}

// TryBarrier sends a barrier for lsn only if that cannot block: nobody
// else is writing, nothing is buffered, and the socket takes the frame
// at once. It reports whether the barrier was sent; if not, nothing was
// written (or the connection failed).
func (cn *Conn) TryBarrier(lsn uint64) bool {
	if cn.raw == nil || !cn.wmu.TryLock() {
		return false
	}
	defer cn.wmu.Unlock()
	if cn.Err() != nil || cn.bw.Buffered() > 0 {
		return false
	}
	var fb [frameHeaderSize + 16]byte
	p := fb[frameHeaderSize:]
	binary.BigEndian.PutUint64(p[0:], cn.epoch)
	binary.BigEndian.PutUint64(p[8:], lsn)
	fb[0] = byte(typeBarrier)
	binary.BigEndian.PutUint32(fb[1:5], uint32(len(p)))
	binary.BigEndian.PutUint32(fb[5:9], crc32.Checksum(p, castagnoli))
	n, werr := 0, error(nil)
	if err := cn.raw.Write(func(fd uintptr) bool {
		n, werr = syscall.Write(int(fd), fb[:])
		return true // one attempt: never wait for room
	}); err != nil {
		werr = err
	}
	switch {
	case werr == nil && n == len(fb):
		return true
	case n > 0 && n < len(fb):
		// Part of the frame went out: the stream must stay whole, so
		// finish it (a few bytes; the socket had room a moment ago).
		cn.c.SetWriteDeadline(time.Now().Add(time.Second))
		_, err := cn.c.Write(fb[n:])
		cn.c.SetWriteDeadline(time.Time{})
		if err != nil {
			cn.fail(err)
			return false
		}
		return true
	case errors.Is(werr, syscall.EAGAIN), errors.Is(werr, syscall.EINTR):
		return false
	default:
		if werr == nil {
			werr = io.ErrShortWrite
		}
		cn.fail(werr)
		return false
	}
}

// Flush pushes buffered records to the network.
func (cn *Conn) Flush() error {
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	if err := cn.Err(); err != nil {
		return err
	}
	return cn.flushLocked()
}

func (cn *Conn) flushLocked() error {
	if err := cn.bw.Flush(); err != nil {
		cn.fail(err)
		return cn.Err()
	}
	return nil
}

// Wait blocks until cond(progress) holds, the connection fails or ctx
// ends.
func (cn *Conn) Wait(ctx context.Context, cond func(Progress) bool) error {
	for {
		cn.mu.Lock()
		ok, err, ch := cond(cn.prog), cn.err, cn.changed
		cn.mu.Unlock()
		if ok {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WaitDurable sends nothing; it waits until the replica reported lsn
// durable (after a Barrier covering it).
func (cn *Conn) WaitDurable(ctx context.Context, lsn uint64) error {
	return cn.Wait(ctx, func(p Progress) bool { return p.Durable >= lsn })
}

// abort closes the socket without waiting (it unblocks a stuck Send).
func (cn *Conn) abort() { cn.fail(ErrConnClosed) }

// Close closes the connection and waits for its reader. Idempotent.
func (cn *Conn) Close() error {
	cn.fail(ErrConnClosed)
	<-cn.done
	return nil
}
