package iscsi

import (
	"github.com/golang/glog"
)

// Task management functions (RFC 7143 §11.5.1).
const (
	tmfAbortTask        = 1
	tmfAbortTaskSet     = 2
	tmfClearACA         = 3
	tmfClearTaskSet     = 4
	tmfLUNReset         = 5
	tmfTargetWarmReset  = 6
	tmfTargetColdReset  = 7
	tmfTaskReassign     = 8
	tmfRespComplete     = 0
	tmfRespNoTask       = 1
	tmfRespNoLUN        = 2
	tmfRespNoReassign   = 4
	tmfRespNotSupported = 5
	tmfRespRejected     = 255
)

// handleTaskMgmt performs a task management request. Waiting for aborted
// commands that are executing happens on a separate goroutine so the
// reader keeps serving Data-Out for other tasks.
func (c *conn) handleTaskMgmt(h *bhs) error {
	if err := c.rd.discardData(); err != nil {
		return err
	}
	if c.sess.discovery {
		return protoErr(rejectProtocolError, "task management in a discovery session")
	}
	immediate := h.immediate()
	if !c.sess.admit(h.u32(24), immediate) {
		return nil
	}
	fn := h.flags() & 0x7f
	itt := h.itt()
	rtt := h.u32(20)
	refCmdSN := h.u32(32)
	lunRaw := h[8:16]
	lun := decodeLUN(lunRaw)

	var waitFor []*task
	resp := byte(tmfRespComplete)
	var reset ResetKind
	switch fn {
	case tmfAbortTask:
		t := c.lookupTask(rtt)
		if t == nil || t.itt == itt {
			exp, _ := c.sess.cmdSNs()
			// Not received yet (RefCmdSN at or beyond ExpCmdSN): it will
			// never run (the initiator must not send it); else completed.
			if int32(refCmdSN-exp) < 0 {
				resp = tmfRespNoTask
			}
		} else {
			waitFor = c.abortTasksFrom(func(x *task) bool { return x == t }, true)
		}
	case tmfAbortTaskSet, tmfClearTaskSet, tmfLUNReset:
		if lun != 0 {
			resp = tmfRespNoLUN
			break
		}
		if fn == tmfAbortTaskSet {
			waitFor = c.abortTasksFrom(func(*task) bool { return true }, true)
			reset = ResetAbortTaskSet
		} else {
			waitFor = c.abortTargetTasks()
			reset = ResetClearTaskSet
			if fn == tmfLUNReset {
				reset = ResetLogicalUnit
			}
		}
	case tmfTargetWarmReset, tmfTargetColdReset:
		waitFor = c.abortTargetTasks()
		reset = ResetTargetWarm
		if fn == tmfTargetColdReset {
			reset = ResetTargetCold
		}
	case tmfClearACA:
		resp = tmfRespNotSupported
	case tmfTaskReassign:
		resp = tmfRespNoReassign
	default:
		resp = tmfRespRejected
	}
	glog.V(1).Infof("iscsi: tsih=%d task management function %d rtt=%#x: response %d, %d tasks aborted",
		c.sess.tsih, fn, rtt, resp, len(waitFor))
	c.cmdWG.Add(1)
	go func() {
		defer c.cmdWG.Done()
		for _, t := range waitFor {
			<-t.done
		}
		if reset != 0 && c.sess.target.OnReset != nil {
			c.sess.target.OnReset(reset, c.sess.nexus)
		}
		p := c.newPDU()
		p.hdr[0] = opTaskMgmtRsp
		p.hdr[1] = flagFinal
		p.hdr[2] = resp
		p.hdr.putU32(16, itt)
		p.status = true
		if !immediate {
			c.sess.release()
		}
		c.send(p)
		if fn == tmfTargetColdReset && resp == tmfRespComplete {
			// A cold reset ends every session of the target after the
			// response (RFC 7143 §11.5.1).
			c.srv.wg.Add(1)
			go func() {
				defer c.srv.wg.Done()
				c.srv.closeTargetSessions(c.sess.target)
			}()
		}
	}()
	return nil
}

// abortTasks marks the matching tasks of this connection aborted. Tasks
// still gathering data are dropped at once; the returned ones are executing
// and complete (without a response) later. It may run on another
// connection's goroutine: a dropped task's buffer is then left to the GC,
// because this connection's reader may still be copying Data-Out into it.
func (c *conn) abortTasks(match func(*task) bool) []*task {
	return c.abortTasksFrom(match, false)
}

func (c *conn) abortTasksFrom(match func(*task) bool, ownReader bool) []*task {
	c.mu.Lock()
	var running, drop []*task
	for _, t := range c.tasks {
		if t.aborted || !match(t) {
			continue
		}
		t.aborted = true
		if t.executing {
			running = append(running, t)
		} else {
			t.finished = true
			delete(c.tasks, t.itt)
			drop = append(drop, t)
		}
	}
	c.mu.Unlock()
	for _, t := range drop {
		c.releaseTaskBuf(t, ownReader)
	}
	return running
}

// abortTargetTasks aborts every task of every session of this target.
func (c *conn) abortTargetTasks() []*task {
	var all []*task
	for _, ss := range c.srv.targetSessions(c.sess.target) {
		for _, oc := range ss.connList() {
			all = append(all, oc.abortTasksFrom(func(*task) bool { return true }, oc == c)...)
		}
	}
	return all
}
