package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/golang/glog"

	"github.com/weedblock/weedblock/frontend/scsi"
)

// Login stages (CSG/NSG values).
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// Login status (class<<8 | detail), RFC 7143 §11.13.5.
const (
	loginSuccess              = 0x0000
	loginTargetMovedTemp      = 0x0101
	loginTargetMovedPerm      = 0x0102
	loginInitiatorError       = 0x0200
	loginAuthFailure          = 0x0201
	loginAuthorizationFailure = 0x0202
	loginNotFound             = 0x0203
	loginTargetRemoved        = 0x0204
	loginUnsupportedVersion   = 0x0205
	loginTooManyConnections   = 0x0206
	loginMissingParameter     = 0x0207
	loginCantIncludeInSession = 0x0208
	loginSessionTypeUnsupp    = 0x0209
	loginSessionNotExist      = 0x020a
	loginInvalidDuringLogin   = 0x020b
	loginTargetError          = 0x0300
	loginServiceUnavailable   = 0x0301
	loginOutOfResources       = 0x0302
)

// maxLoginRounds bounds the number of login PDUs of one login phase.
const maxLoginRounds = 64

// loginError ends a login with a status sent to the initiator.
type loginError struct {
	status uint16
	msg    string
	extra  *textBuf // keys sent with the failure (e.g. TargetAddress)
}

func (e *loginError) Error() string {
	return fmt.Sprintf("login failed (status %#04x): %s", e.status, e.msg)
}

func loginFail(status uint16, format string, args ...any) *loginError {
	return &loginError{status: status, msg: fmt.Sprintf(format, args...)}
}

// chapState tracks CHAP progress.
type chapState int

const (
	chapNone chapState = iota
	chapWaitAlgorithm
	chapWaitResponse
	chapDone
)

// login is the state of one connection's login phase.
type login struct {
	c   *conn
	cfg *Config

	first     bool
	isid      [6]byte
	tsih      uint16
	cid       uint16
	cmdSN     uint32
	csg       int
	initiator string
	alias     string
	target    *Target
	discovery bool

	authRequired *CHAP
	authMethod   string // "", "None", "CHAP"
	chap         chapState
	chapID       byte
	chapChal     []byte
	authDone     bool

	params        sessionParams
	headerDigest  bool
	dataDigest    bool
	initiatorMRDS uint32
	declaredMRDS  bool
	sentTPGT      bool

	pending []byte // text of continued (C bit) requests
}

// result of a finished login.
type loginResult struct {
	sess *session
}

func (c *conn) runLogin() (*session, error) {
	cfg := &c.srv.cfg
	l := &login{
		c:             c,
		cfg:           cfg,
		first:         true,
		params:        defaultSessionParams(),
		initiatorMRDS: 8192,
	}
	deadline := time.Now().Add(cfg.LoginTimeout)
	if err := c.nc.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("login: set deadline: %w", err)
	}
	// During login the limit is the default 8192 (RFC 7143 §13.12); allow
	// our own declared value too since some initiators assume it early.
	c.rd.maxRecvDSL = int(max(cfg.MaxRecvDataSegmentLength, 8192))
	for round := 0; round < maxLoginRounds; round++ {
		if err := c.rd.readHeader(); err != nil {
			return nil, loginReadErr(err)
		}
		h := &c.rd.hdr
		if h.opcode() != opLoginReq {
			c.rd.discardData()
			return nil, fmt.Errorf("login: got opcode %#x before login completed: %w", h.opcode(), ErrProtocol)
		}
		data, err := c.rd.readDataScratch()
		if err != nil {
			return nil, loginReadErr(err)
		}
		sess, done, err := l.step(h, data)
		if err != nil {
			var le *loginError
			if errors.As(err, &le) {
				l.sendFailure(h, le)
			}
			return nil, err
		}
		if done {
			c.rd.headerDigest, c.rd.dataDigest = l.headerDigest, l.dataDigest
			if err := c.nc.SetDeadline(time.Time{}); err != nil {
				return nil, fmt.Errorf("login: clear deadline: %w", err)
			}
			return sess, nil
		}
	}
	return nil, fmt.Errorf("login: more than %d login PDUs: %w", maxLoginRounds, ErrProtocol)
}

func loginReadErr(err error) error {
	if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
		return fmt.Errorf("login: %w", ErrLoginTimeout)
	}
	return fmt.Errorf("login: read: %w", err)
}

// step handles one login request.
func (l *login) step(h *bhs, data []byte) (*session, bool, error) {
	flags := h.flags()
	transit := flags&0x80 != 0
	cont := flags&0x40 != 0
	csg := int(flags>>2) & 3
	nsg := int(flags) & 3
	verMax, verMin := h[2], h[3]

	var isid [6]byte
	copy(isid[:], h[8:14])
	tsih := h.u16(14)
	if l.first {
		if verMin > 0 {
			return nil, false, loginFail(loginUnsupportedVersion, "version-min %d", verMin)
		}
		_ = verMax
		l.isid, l.tsih, l.cid = isid, tsih, h.u16(20)
		l.cmdSN = h.u32(24)
		l.c.statSN = h.u32(28)
		l.csg = csg
		if csg != stageSecurity && csg != stageOperational {
			return nil, false, loginFail(loginInitiatorError, "first login request in stage %d", csg)
		}
	} else {
		if isid != l.isid || tsih != l.tsih {
			return nil, false, loginFail(loginInitiatorError, "ISID/TSIH changed during login")
		}
		if csg != l.csg {
			return nil, false, loginFail(loginInitiatorError, "CSG %d, expected %d", csg, l.csg)
		}
	}
	if transit && cont {
		return nil, false, loginFail(loginInitiatorError, "T and C both set")
	}
	if transit && (nsg == 2 || nsg <= csg) {
		return nil, false, loginFail(loginInitiatorError, "invalid transition %d -> %d", csg, nsg)
	}
	if len(l.pending)+len(data) > maxTextLen {
		return nil, false, loginFail(loginInitiatorError, "login text longer than %d bytes", maxTextLen)
	}
	l.pending = append(l.pending, data...)
	if cont {
		// Acknowledge the partial text with an empty response.
		l.sendResponse(h, false, csg, csg, nil)
		return nil, false, nil
	}
	text := l.pending
	l.pending = nil
	kvs, err := parseText(text)
	if err != nil {
		return nil, false, loginFail(loginInitiatorError, "%v", err)
	}

	var resp textBuf
	if l.first {
		if err := l.identify(kvs, &resp); err != nil {
			return nil, false, err
		}
		l.first = false
	}
	if err := l.negotiate(kvs, &resp); err != nil {
		return nil, false, err
	}

	// Decide whether we transit.
	canTransit := transit
	if transit && !l.authDone {
		switch {
		case l.authRequired == nil:
			l.authDone = true
		case csg == stageSecurity && l.authMethod == "CHAP":
			canTransit = false // the CHAP exchange continues
		default:
			return nil, false, loginFail(loginAuthFailure, "authentication required")
		}
	}
	if !l.declaredMRDS && (csg == stageOperational || canTransit && nsg == stageFullFeature) {
		resp.add("MaxRecvDataSegmentLength", strconv.FormatUint(uint64(l.cfg.MaxRecvDataSegmentLength), 10))
		l.declaredMRDS = true
	}
	if canTransit && nsg == stageFullFeature {
		sess, err := l.finish()
		if err != nil {
			return nil, false, err
		}
		l.tsih = sess.tsih
		l.sendResponse(h, true, csg, nsg, resp.bytes())
		return sess, true, nil
	}
	l.sendResponse(h, canTransit, csg, nsg, resp.bytes())
	if canTransit {
		l.csg = nsg
	}
	return nil, false, nil
}

// identify handles the keys of the first login request.
func (l *login) identify(kvs []kv, resp *textBuf) error {
	sessionType := "Normal"
	targetName := ""
	for _, p := range kvs {
		switch p.key {
		case "InitiatorName":
			l.initiator = p.value
		case "InitiatorAlias":
			l.alias = p.value
		case "SessionType":
			sessionType = p.value
		case "TargetName":
			targetName = p.value
		}
	}
	if l.initiator == "" {
		return loginFail(loginMissingParameter, "no InitiatorName")
	}
	if !validName(l.initiator) {
		return loginFail(loginInitiatorError, "invalid InitiatorName %q", l.initiator)
	}
	switch sessionType {
	case "Discovery":
		l.discovery = true
		l.authRequired = l.cfg.DiscoveryCHAP
	case "Normal":
		if targetName == "" {
			return loginFail(loginMissingParameter, "normal session without TargetName")
		}
		if l.cfg.Redirect != nil {
			if addr, ok := l.cfg.Redirect(targetName); ok {
				if !strings.Contains(addr, ",") {
					addr = fmt.Sprintf("%s,%d", addr, l.cfg.TPGT)
				}
				var t textBuf
				t.add("TargetAddress", addr)
				return &loginError{status: loginTargetMovedTemp, msg: "redirected to " + addr, extra: &t}
			}
		}
		t := l.c.srv.lookupTarget(targetName)
		if t == nil {
			return loginFail(loginNotFound, "no target %q", targetName)
		}
		l.target = t
		l.authRequired = t.CHAP
		alias := t.Alias
		if alias == "" {
			alias = l.cfg.Alias
		}
		if alias != "" {
			resp.add("TargetAlias", alias)
		}
		resp.add("TargetPortalGroupTag", strconv.Itoa(int(l.cfg.TPGT)))
		l.sentTPGT = true
	default:
		return loginFail(loginSessionTypeUnsupp, "session type %q", sessionType)
	}
	if l.tsih != 0 && l.discovery {
		return loginFail(loginSessionNotExist, "discovery login with TSIH %d", l.tsih)
	}
	return nil
}

// negotiate processes every key of one (complete) login request.
func (l *login) negotiate(kvs []kv, resp *textBuf) error {
	for _, p := range kvs {
		k, v := p.key, p.value
		switch k {
		case "InitiatorName", "InitiatorAlias", "SessionType", "TargetName":
			// Declarations handled by identify; they may be repeated.
			continue
		case "AuthMethod":
			if l.csg != stageSecurity {
				return loginFail(loginInitiatorError, "AuthMethod outside security stage")
			}
			l.authMethod = l.chooseAuth(v)
			if l.authMethod == "" {
				if l.authRequired != nil {
					return loginFail(loginAuthFailure, "initiator offers %q, CHAP required", v)
				}
				resp.add(k, valReject)
				continue
			}
			if l.authMethod == "CHAP" {
				l.chap = chapWaitAlgorithm
			}
			resp.add(k, l.authMethod)
		case "CHAP_A":
			if l.csg != stageSecurity || l.chap != chapWaitAlgorithm {
				return loginFail(loginInitiatorError, "unexpected CHAP_A")
			}
			if !listContains(v, chapMD5) {
				resp.add(k, valReject)
				return loginFail(loginAuthFailure, "CHAP algorithms %q lack MD5", v)
			}
			id, chal, err := newCHAPChallenge()
			if err != nil {
				return loginFail(loginTargetError, "%v", err)
			}
			l.chapID, l.chapChal = id, chal
			resp.add("CHAP_A", chapMD5)
			resp.add("CHAP_I", strconv.Itoa(int(id)))
			resp.add("CHAP_C", encodeCHAPBinary(chal))
			l.chap = chapWaitResponse
		case "CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C":
			if l.csg != stageSecurity || l.chap != chapWaitResponse {
				return loginFail(loginInitiatorError, "unexpected %s", k)
			}
		default:
			val, respond, err := l.negotiateOperational(k, v)
			if err != nil {
				return err
			}
			if respond {
				resp.add(k, val)
			}
		}
	}
	if l.chap == chapWaitResponse {
		if err := l.checkCHAP(kvs, resp); err != nil {
			return err
		}
	}
	return nil
}

func (l *login) chooseAuth(offer string) string {
	for _, m := range strings.Split(offer, ",") {
		switch m {
		case "CHAP":
			if l.authRequired != nil {
				return "CHAP"
			}
		case "None":
			if l.authRequired == nil {
				return "None"
			}
		}
	}
	return ""
}

// checkCHAP verifies the initiator's CHAP_N/CHAP_R and answers a mutual
// challenge. It waits (returns nil) while CHAP_R has not arrived.
func (l *login) checkCHAP(kvs []kv, resp *textBuf) error {
	var name, rv, iv, cv string
	var haveR, haveI, haveC bool
	for _, p := range kvs {
		switch p.key {
		case "CHAP_N":
			name = p.value
		case "CHAP_R":
			rv, haveR = p.value, true
		case "CHAP_I":
			iv, haveI = p.value, true
		case "CHAP_C":
			cv, haveC = p.value, true
		}
	}
	if !haveR {
		return nil
	}
	cred := l.authRequired
	if cred == nil {
		return loginFail(loginAuthFailure, "CHAP without configured secret")
	}
	got, err := decodeCHAPBinary(rv)
	if err != nil {
		return loginFail(loginAuthFailure, "CHAP_R: %v", err)
	}
	want := chapResponse(l.chapID, cred.Secret, l.chapChal)
	if name != cred.User || !chapEqual(got, want) {
		return loginFail(loginAuthFailure, "CHAP response of %q does not match", name)
	}
	if haveI != haveC {
		return loginFail(loginAuthFailure, "mutual CHAP needs both CHAP_I and CHAP_C")
	}
	if haveI {
		if cred.MutualSecret == "" {
			return loginFail(loginAuthFailure, "mutual CHAP asked but not configured")
		}
		id, err := parseCHAPID(iv)
		if err != nil {
			return loginFail(loginAuthFailure, "%v", err)
		}
		chal, err := decodeCHAPBinary(cv)
		if err != nil || len(chal) == 0 || len(chal) > 1024 {
			return loginFail(loginAuthFailure, "CHAP_C invalid")
		}
		if chapEqual(chal, l.chapChal) {
			return loginFail(loginAuthFailure, "initiator reflected the target's challenge")
		}
		resp.add("CHAP_N", cred.MutualUser)
		resp.add("CHAP_R", encodeCHAPBinary(chapResponse(id, cred.MutualSecret, chal)))
	}
	l.chap = chapDone
	l.authDone = true
	return nil
}

func listContains(list, v string) bool {
	for _, x := range strings.Split(list, ",") {
		if x == v {
			return true
		}
	}
	return false
}

func inList(list []string, v string) bool {
	for _, x := range list {
		if strings.EqualFold(x, v) {
			return true
		}
	}
	return false
}

// negotiateOperational answers one operational key. It returns the value to
// send back and whether to send one at all.
func (l *login) negotiateOperational(k, v string) (string, bool, error) {
	num := func(lo, hi uint64) (uint64, bool) {
		n, err := parseNumber(v)
		if err != nil || n < lo || n > hi {
			return 0, false
		}
		return n, true
	}
	p := &l.params
	switch k {
	case "HeaderDigest", "DataDigest":
		allowed := l.cfg.HeaderDigests
		if k == "DataDigest" {
			allowed = l.cfg.DataDigests
		}
		for _, d := range strings.Split(v, ",") {
			if (d == "None" || d == "CRC32C") && inList(allowed, d) {
				if k == "HeaderDigest" {
					l.headerDigest = d == "CRC32C"
				} else {
					l.dataDigest = d == "CRC32C"
				}
				return d, true, nil
			}
		}
		return valReject, true, nil
	case "MaxConnections":
		if _, ok := num(1, 65535); !ok {
			return valReject, true, nil
		}
		p.maxConnections = 1
		return "1", true, nil
	case "InitialR2T":
		b, ok := parseBool(v)
		if !ok {
			return valReject, true, nil
		}
		p.initialR2T = b || l.cfg.RequireInitialR2T
		return boolStr(p.initialR2T), true, nil
	case "ImmediateData":
		b, ok := parseBool(v)
		if !ok {
			return valReject, true, nil
		}
		p.immediateData = b && !l.cfg.NoImmediateData
		return boolStr(p.immediateData), true, nil
	case "MaxRecvDataSegmentLength":
		n, ok := num(512, 1<<24-1)
		if !ok {
			// Keep the default 8192; our own declaration uses this key,
			// so no Reject is echoed.
			return "", false, nil
		}
		l.initiatorMRDS = uint32(n)
		return "", false, nil
	case "MaxBurstLength":
		n, ok := num(512, 1<<24-1)
		if !ok {
			return valReject, true, nil
		}
		p.maxBurstLength = min(uint32(n), l.cfg.MaxBurstLength)
		return strconv.FormatUint(uint64(p.maxBurstLength), 10), true, nil
	case "FirstBurstLength":
		n, ok := num(512, 1<<24-1)
		if !ok {
			return valReject, true, nil
		}
		p.firstBurstLength = min(uint32(n), l.cfg.FirstBurstLength, l.cfg.MaxBurstLength)
		return strconv.FormatUint(uint64(p.firstBurstLength), 10), true, nil
	case "DefaultTime2Wait":
		n, ok := num(0, 3600)
		if !ok {
			return valReject, true, nil
		}
		p.defaultTime2Wait = max(uint32(n), 2)
		return strconv.FormatUint(uint64(p.defaultTime2Wait), 10), true, nil
	case "DefaultTime2Retain":
		if _, ok := num(0, 3600); !ok {
			return valReject, true, nil
		}
		p.defaultTime2Retain = 0
		return "0", true, nil
	case "MaxOutstandingR2T":
		n, ok := num(1, 65535)
		if !ok {
			return valReject, true, nil
		}
		p.maxOutstandingR2T = min(uint32(n), l.cfg.MaxOutstandingR2T)
		return strconv.FormatUint(uint64(p.maxOutstandingR2T), 10), true, nil
	case "DataPDUInOrder", "DataSequenceInOrder":
		if _, ok := parseBool(v); !ok {
			return valReject, true, nil
		}
		return "Yes", true, nil
	case "ErrorRecoveryLevel":
		if _, ok := num(0, 2); !ok {
			return valReject, true, nil
		}
		p.errorRecoveryLevel = 0
		return "0", true, nil
	case "IFMarker", "OFMarker":
		if _, ok := parseBool(v); !ok {
			return valReject, true, nil
		}
		return "No", true, nil
	case "IFMarkInt", "OFMarkInt":
		return valIrrelevant, true, nil
	case "TaskReporting":
		return "RFC3720", true, nil
	case "SendTargets":
		return valIrrelevant, true, nil
	case "TargetAlias", "TargetAddress", "TargetPortalGroupTag":
		// Only the target declares these.
		return valReject, true, nil
	}
	return valNotUnderstood, true, nil
}

// finish creates (or reinstates, or joins) the session at the end of login.
func (l *login) finish() (*session, error) {
	srv := l.c.srv
	p := l.params
	if p.firstBurstLength > p.maxBurstLength {
		p.firstBurstLength = p.maxBurstLength
	}
	key := sessionKey{initiator: l.initiator, isid: l.isid}
	if l.target != nil {
		key.target = l.target.Name
		if srv.lookupTarget(l.target.Name) != l.target {
			return nil, loginFail(loginTargetRemoved, "target %s removed", l.target.Name)
		}
	}
	tsih := l.tsih
	srv.mu.Lock()
	if srv.closed {
		srv.mu.Unlock()
		return nil, loginFail(loginServiceUnavailable, "server closing")
	}
	old := srv.sessions[key]
	srv.mu.Unlock()
	if tsih != 0 {
		if old == nil || old.tsih != tsih {
			return nil, loginFail(loginSessionNotExist, "no session with TSIH %d", tsih)
		}
		if !old.hasConn(l.cid) {
			return nil, loginFail(loginTooManyConnections, "session TSIH %d allows one connection", tsih)
		}
		// Connection reinstatement at ErrorRecoveryLevel 0: the old
		// connection and its tasks go; the session restarts with its TSIH.
	}
	if old != nil {
		old.close("reinstated by a new login")
	}
	sess := &session{
		srv:       srv,
		key:       key,
		target:    l.target,
		discovery: l.discovery,
		params:    p,
		window:    l.cfg.CmdWindow,
		expCmdSN:  l.cmdSN,
		conns:     make(map[uint16]*conn),
	}
	tpgt := l.cfg.TPGT
	tname := ""
	if l.target != nil {
		tname = l.target.Name
	}
	sess.nexus = scsi.Nexus{
		InitiatorPort:        fmt.Sprintf("%s,i,0x%012x", l.initiator, l.isid[:]),
		TargetPort:           fmt.Sprintf("%s,t,0x%04x", tname, tpgt),
		RelativeTargetPortID: 1,
	}
	srv.mu.Lock()
	if srv.closed {
		srv.mu.Unlock()
		return nil, loginFail(loginServiceUnavailable, "server closing")
	}
	if cur := srv.sessions[key]; cur != nil && cur != old {
		srv.mu.Unlock()
		return nil, loginFail(loginServiceUnavailable, "concurrent login for the same session")
	}
	if tsih == 0 {
		tsih = srv.allocTSIHLocked()
	}
	sess.tsih = tsih
	sess.publishLocked()
	srv.sessions[key] = sess
	srv.mu.Unlock()

	c := l.c
	c.cid = l.cid
	c.sess = sess
	c.maxSendDSL = l.initiatorMRDS
	if err := sess.addConn(c); err != nil {
		return nil, loginFail(loginTooManyConnections, "%v", err)
	}
	c.rd.maxRecvDSL = int(l.cfg.MaxRecvDataSegmentLength)
	glog.V(1).Infof("iscsi: login %s tsih=%d target=%q discovery=%v hd=%v dd=%v mrdsl=%d mbl=%d fbl=%d imm=%v r2t=%v",
		sess.nexus.InitiatorPort, tsih, tname, l.discovery, l.headerDigest, l.dataDigest,
		l.initiatorMRDS, p.maxBurstLength, p.firstBurstLength, p.immediateData, p.initialR2T)
	return sess, nil
}

// sendResponse writes a login response directly (the writer goroutine is
// not running yet).
func (l *login) sendResponse(req *bhs, transit bool, csg, nsg int, data []byte) {
	var h bhs
	h[0] = opLoginRsp
	f := byte(csg&3) << 2
	if transit {
		f |= 0x80 | byte(nsg&3)
	}
	h[1] = f
	h[2], h[3] = 0, 0
	copy(h[8:14], l.isid[:])
	h.putU16(14, l.tsih)
	h.putU32(16, req.itt())
	l.writeLogin(&h, data, 0)
}

func (l *login) sendFailure(req *bhs, le *loginError) {
	glog.V(1).Infof("iscsi: login from %s (%s): %v", l.c.nc.RemoteAddr(), l.initiator, le)
	var h bhs
	h[0] = opLoginRsp
	copy(h[8:14], req[8:14])
	h.putU32(16, req.itt())
	var data []byte
	if le.extra != nil {
		data = le.extra.bytes()
	}
	l.writeLogin(&h, data, le.status)
}

func (l *login) writeLogin(h *bhs, data []byte, status uint16) {
	c := l.c
	h.putU32(24, c.statSN)
	c.statSN++
	exp := l.cmdSN
	h.putU32(28, exp)
	h.putU32(32, exp+l.cfg.CmdWindow-1)
	binary.BigEndian.PutUint16(h[36:38], status)
	if len(data) > int(l.initiatorMRDS) {
		data = data[:l.initiatorMRDS]
	}
	if err := c.wr.write(h, data); err == nil {
		c.wr.flush()
	}
}
