package iscsi

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestLoginNoneAndLogout(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	in := dialInit(t, ts.addr)
	m := in.login(ts.name, defaultOpKeys())
	must(t, m["MaxRecvDataSegmentLength"] == "262144", "target MRDSL %q", m["MaxRecvDataSegmentLength"])
	must(t, m["ErrorRecoveryLevel"] == "0", "ERL %q", m["ErrorRecoveryLevel"])
	must(t, m["InitialR2T"] == "No" && m["ImmediateData"] == "Yes", "r2t/imm %v", m)
	must(t, m["MaxConnections"] == "1", "MaxConnections %q", m["MaxConnections"])
	in.nop([]byte("ping-data"))
	r := in.logout(0)
	must(t, r[2] == 0, "logout response %d", r[2])
	in.expectClosed()
}

func TestLoginTPGTAndAlias(t *testing.T) {
	ts := startServer(t, Config{TPGT: 7}, func(tg *Target) { tg.Alias = "volume-one" })
	in := dialInit(t, ts.addr)
	_, m := in.loginPDU(0, 1, true, kvText("InitiatorName", testInitiatorName,
		"TargetName", ts.name, "AuthMethod", "None"))
	must(t, m["TargetPortalGroupTag"] == "7", "TPGT %q", m["TargetPortalGroupTag"])
	must(t, m["TargetAlias"] == "volume-one", "alias %q", m["TargetAlias"])
}

func TestLoginSkipSecurityStage(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	in := dialInit(t, ts.addr)
	o := defaultOpKeys()
	r, m := in.loginPDU(1, 3, true, o.text("InitiatorName", testInitiatorName, "TargetName", ts.name))
	must(t, loginStatus(r) == 0, "status %#x", loginStatus(r))
	must(t, r[1]&0x83 == 0x83, "flags %#x", r[1])
	must(t, r.u16(14) != 0, "tsih 0")
	must(t, m["MaxRecvDataSegmentLength"] != "", "target did not declare MRDSL: %v", m)
}

func TestLoginNegotiationRules(t *testing.T) {
	ts := startServer(t, Config{MaxBurstLength: 65536, MaxOutstandingR2T: 4}, nil)
	in := dialInit(t, ts.addr)
	r, _ := in.loginPDU(0, 1, true, kvText("InitiatorName", testInitiatorName,
		"TargetName", ts.name, "AuthMethod", "None"))
	must(t, loginStatus(r) == 0, "status %#x", loginStatus(r))
	r, m := in.loginPDU(1, 3, true, kvText(
		"MaxBurstLength", "1048576", "FirstBurstLength", "262144", "MaxOutstandingR2T", "8",
		"InitialR2T", "Yes", "ImmediateData", "No", "X-com.example.Foo", "bar",
		"UnknownKey", "1", "ErrorRecoveryLevel", "2", "HeaderDigest", "Bogus,CRC32C",
		"DefaultTime2Wait", "7", "OFMarker", "Yes", "OFMarkInt", "2048~4096",
		"MaxRecvDataSegmentLength", "abc", "TargetAlias", "x"))
	must(t, loginStatus(r) == 0, "status %#x", loginStatus(r))
	want := map[string]string{
		"MaxBurstLength": "65536", "MaxOutstandingR2T": "4",
		"InitialR2T": "Yes", "ImmediateData": "No", "X-com.example.Foo": "NotUnderstood",
		"UnknownKey": "NotUnderstood", "ErrorRecoveryLevel": "0", "HeaderDigest": "CRC32C",
		"DefaultTime2Wait": "7", "OFMarker": "No", "OFMarkInt": "Irrelevant",
		"MaxRecvDataSegmentLength": "262144", "TargetAlias": "Reject",
		"FirstBurstLength": "65536",
	}
	for k, v := range want {
		must(t, m[k] == v, "%s = %q, want %q (all: %v)", k, m[k], v, m)
	}
}

func TestLoginErrors(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	cases := []struct {
		name   string
		text   []byte
		status uint16
	}{
		{"unknown target", kvText("InitiatorName", testInitiatorName, "TargetName", IQN("nope")), loginNotFound},
		{"no initiator name", kvText("TargetName", ts.name), loginMissingParameter},
		{"no target name", kvText("InitiatorName", testInitiatorName), loginMissingParameter},
		{"bad session type", kvText("InitiatorName", testInitiatorName, "SessionType", "Weird"), loginSessionTypeUnsupp},
		{"malformed text", []byte("InitiatorName\x00"), loginInitiatorError},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := dialInit(t, ts.addr)
			r, _ := in.loginPDU(0, 1, true, c.text)
			must(t, loginStatus(r) == c.status, "status %#04x, want %#04x", loginStatus(r), c.status)
			in.expectClosed()
		})
	}
	t.Run("unsupported version", func(t *testing.T) {
		in := dialInit(t, ts.addr)
		var h bhs
		h[0] = opLoginReq | flagImmediate
		h[1] = 0x81
		h[3] = 1 // Version-min 1
		in.send(&h, kvText("InitiatorName", testInitiatorName, "TargetName", ts.name))
		r, _ := in.recv()
		must(t, loginStatus(r) == loginUnsupportedVersion, "status %#x", loginStatus(r))
	})
	t.Run("non-login PDU first", func(t *testing.T) {
		in := dialInit(t, ts.addr)
		var h bhs
		h[0] = opNopOut | flagImmediate
		in.send(&h, nil)
		in.expectClosed()
	})
}

func TestLoginTimeout(t *testing.T) {
	ts := startServer(t, Config{LoginTimeout: 200 * time.Millisecond}, nil)
	in := dialInit(t, ts.addr)
	// Half a header, then silence: the target must give up by itself.
	in.nc.Write(make([]byte, 20))
	start := time.Now()
	in.expectClosed()
	must(t, time.Since(start) < 4*time.Second, "closed after %v", time.Since(start))
}

func TestLoginContinuedText(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	in := dialInit(t, ts.addr)
	text := kvText("InitiatorName", testInitiatorName, "TargetName", ts.name, "AuthMethod", "None")
	var h bhs
	h[0] = opLoginReq | flagImmediate
	h[1] = 0x40 // C, CSG 0
	copy(h[8:14], in.isid[:])
	in.send(&h, text[:10])
	r, d := in.recv()
	must(t, r.opcode() == opLoginRsp && loginStatus(r) == 0 && len(d) == 0, "continue ack: %#x %q", loginStatus(r), d)
	h[1] = 0x81 // T, CSG 0, NSG 1
	in.send(&h, text[10:])
	r, d = in.recv()
	must(t, loginStatus(r) == 0 && r[1]&0x80 != 0, "final: status %#x flags %#x", loginStatus(r), r[1])
	must(t, kvMap(t, d)["AuthMethod"] == "None", "keys %q", d)
}

func chapLogin(t *testing.T, in *testInit, target, user, secret string, mutual bool) (bhs, map[string]string) {
	t.Helper()
	r, m := in.loginPDU(0, 1, true, kvText("InitiatorName", testInitiatorName,
		"TargetName", target, "AuthMethod", "CHAP,None"))
	must(t, loginStatus(r) == 0, "status %#x", loginStatus(r))
	must(t, m["AuthMethod"] == "CHAP", "AuthMethod %q", m["AuthMethod"])
	must(t, r[1]&0x80 == 0, "target transited before CHAP")
	r, m = in.loginPDU(0, 1, false, kvText("CHAP_A", "7,5"))
	must(t, loginStatus(r) == 0, "status %#x", loginStatus(r))
	must(t, m["CHAP_A"] == "5", "CHAP_A %q", m["CHAP_A"])
	id, err := parseCHAPID(m["CHAP_I"])
	must(t, err == nil, "CHAP_I %q: %v", m["CHAP_I"], err)
	chal, err := decodeCHAPBinary(m["CHAP_C"])
	must(t, err == nil && len(chal) >= 8, "CHAP_C %q: %v", m["CHAP_C"], err)
	pairs := []string{"CHAP_N", user, "CHAP_R", encodeCHAPBinary(chapResponse(id, secret, chal))}
	if mutual {
		pairs = append(pairs, "CHAP_I", "77", "CHAP_C", "0x0102030405060708090a0b0c0d0e0f10")
	}
	return in.loginPDU(0, 1, true, kvText(pairs...))
}

func TestLoginCHAP(t *testing.T) {
	creds := &CHAP{User: "alice", Secret: "alice-secret-12", MutualUser: "target", MutualSecret: "target-secret-1"}
	ts := startServer(t, Config{}, func(tg *Target) { tg.CHAP = creds })

	t.Run("one-way", func(t *testing.T) {
		in := dialInit(t, ts.addr)
		r, m := chapLogin(t, in, ts.name, "alice", "alice-secret-12", false)
		must(t, loginStatus(r) == 0, "status %#x", loginStatus(r))
		must(t, m["CHAP_N"] == "", "unexpected mutual answer %v", m)
		in.operational(r, defaultOpKeys())
		in.nop(nil)
	})
	t.Run("mutual", func(t *testing.T) {
		in := dialInit(t, ts.addr)
		r, m := chapLogin(t, in, ts.name, "alice", "alice-secret-12", true)
		must(t, loginStatus(r) == 0, "status %#x", loginStatus(r))
		must(t, m["CHAP_N"] == "target", "CHAP_N %q", m["CHAP_N"])
		got, err := decodeCHAPBinary(m["CHAP_R"])
		must(t, err == nil, "CHAP_R: %v", err)
		chal, _ := decodeCHAPBinary("0x0102030405060708090a0b0c0d0e0f10")
		must(t, bytes.Equal(got, chapResponse(77, "target-secret-1", chal)), "mutual response wrong")
		in.operational(r, defaultOpKeys())
	})
	t.Run("wrong secret", func(t *testing.T) {
		in := dialInit(t, ts.addr)
		r, _ := chapLogin(t, in, ts.name, "alice", "wrong-secret-00", false)
		must(t, loginStatus(r) == loginAuthFailure, "status %#x", loginStatus(r))
		in.expectClosed()
	})
	t.Run("wrong user", func(t *testing.T) {
		in := dialInit(t, ts.addr)
		r, _ := chapLogin(t, in, ts.name, "mallory", "alice-secret-12", false)
		must(t, loginStatus(r) == loginAuthFailure, "status %#x", loginStatus(r))
	})
	t.Run("none offered", func(t *testing.T) {
		in := dialInit(t, ts.addr)
		r, _ := in.loginPDU(0, 1, true, kvText("InitiatorName", testInitiatorName,
			"TargetName", ts.name, "AuthMethod", "None"))
		must(t, loginStatus(r) == loginAuthFailure, "status %#x", loginStatus(r))
	})
	t.Run("security skipped", func(t *testing.T) {
		in := dialInit(t, ts.addr)
		r, _ := in.loginPDU(1, 3, true, defaultOpKeys().text("InitiatorName", testInitiatorName, "TargetName", ts.name))
		must(t, loginStatus(r) == loginAuthFailure, "status %#x", loginStatus(r))
	})
	t.Run("reflected challenge", func(t *testing.T) {
		in := dialInit(t, ts.addr)
		r, m := in.loginPDU(0, 1, true, kvText("InitiatorName", testInitiatorName,
			"TargetName", ts.name, "AuthMethod", "CHAP"))
		must(t, m["AuthMethod"] == "CHAP", "AuthMethod %q", m["AuthMethod"])
		r, m = in.loginPDU(0, 1, false, kvText("CHAP_A", "5"))
		id, _ := parseCHAPID(m["CHAP_I"])
		chal, _ := decodeCHAPBinary(m["CHAP_C"])
		r, _ = in.loginPDU(0, 1, true, kvText("CHAP_N", "alice",
			"CHAP_R", encodeCHAPBinary(chapResponse(id, "alice-secret-12", chal)),
			"CHAP_I", "1", "CHAP_C", m["CHAP_C"]))
		must(t, loginStatus(r) == loginAuthFailure, "status %#x", loginStatus(r))
	})
}

func TestDiscoverySendTargets(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	if err := ts.srv.AddTarget(Target{Name: IQN("vol2"), LU: newMemLU(8)}); err != nil {
		t.Fatal(err)
	}
	in := dialInit(t, ts.addr)
	r, _ := in.loginPDU(0, 1, true, kvText("InitiatorName", testInitiatorName, "SessionType", "Discovery", "AuthMethod", "None"))
	must(t, loginStatus(r) == 0, "status %#x", loginStatus(r))
	in.operational(r, defaultOpKeys())

	text := func(v string) string {
		var h bhs
		h[0] = opTextReq | flagImmediate
		h[1] = flagFinal
		h.putU32(16, in.nextITT())
		h.putU32(20, reservedTag)
		h.putU32(24, in.cmdSN)
		in.send(&h, kvText("SendTargets", v))
		r, d := in.recv()
		must(t, r.opcode() == opTextRsp && r.final(), "text response opcode %#x flags %#x", r.opcode(), r.flags())
		return string(d)
	}
	all := text("All")
	want := "TargetName=" + IQN("vol1") + "\x00TargetAddress=" + ts.addr + ",1\x00" +
		"TargetName=" + IQN("vol2") + "\x00TargetAddress=" + ts.addr + ",1\x00"
	must(t, all == want, "SendTargets=All:\n%q\nwant\n%q", all, want)
	one := text(IQN("vol2"))
	must(t, one == "TargetName="+IQN("vol2")+"\x00TargetAddress="+ts.addr+",1\x00", "one: %q", one)
	none := text(IQN("missing"))
	must(t, none == "", "missing target: %q", none)

	// SCSI commands are not allowed in discovery sessions.
	h := in.scsiCmdHeader(read10(0, 1), true, false, 512, true)
	in.send(&h, nil)
	r, _ = in.recv()
	must(t, r.opcode() == opReject, "SCSI command in discovery answered by %#x", r.opcode())
}

func TestSendTargetsContinuation(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	for j := 0; j < 60; j++ {
		name := IQN("a-rather-long-volume-name-to-fill-the-text-response-" + strings.Repeat("x", 20) + string(rune('A'+j%26)) + string(rune('a'+j/26)))
		if err := ts.srv.AddTarget(Target{Name: name, LU: newMemLU(8)}); err != nil {
			t.Fatal(err)
		}
	}
	in := dialInit(t, ts.addr)
	r, _ := in.loginPDU(0, 1, true, kvText("InitiatorName", testInitiatorName, "SessionType", "Discovery", "AuthMethod", "None"))
	o := defaultOpKeys()
	o.mrdsl = "1024"
	in.operational(r, o)
	var h bhs
	h[0] = opTextReq | flagImmediate
	h[1] = flagFinal
	itt := in.nextITT()
	h.putU32(16, itt)
	h.putU32(20, reservedTag)
	in.send(&h, kvText("SendTargets", "All"))
	var all []byte
	for n := 0; ; n++ {
		must(t, n < 100, "too many text PDUs")
		r, d := in.recv()
		must(t, len(d) <= 1024, "text PDU of %d bytes beyond MRDSL", len(d))
		all = append(all, d...)
		if r.final() {
			break
		}
		must(t, r.flags()&0x40 != 0 && r.u32(20) != reservedTag, "continuation without C/TTT")
		h[1] = flagFinal
		h.putU32(20, r.u32(20))
		in.send(&h, nil)
	}
	m, err := parseTextPairs(all, true)
	must(t, err == nil, "parse: %v", err)
	must(t, len(m) == 61*2, "got %d pairs", len(m))
}

func TestRedirect(t *testing.T) {
	ts := startServer(t, Config{Redirect: func(name string) (string, bool) {
		if name == IQN("moved") {
			return "10.0.0.9:3260", true
		}
		return "", false
	}}, nil)
	in := dialInit(t, ts.addr)
	r, m := in.loginPDU(0, 1, true, kvText("InitiatorName", testInitiatorName, "TargetName", IQN("moved")))
	must(t, loginStatus(r) == loginTargetMovedTemp, "status %#x", loginStatus(r))
	must(t, m["TargetAddress"] == "10.0.0.9:3260,1", "TargetAddress %q", m["TargetAddress"])
	in.expectClosed()
	in = dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
}

func TestSessionReinstatement(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	a := dialInit(t, ts.addr)
	a.login(ts.name, defaultOpKeys())
	b := dialInit(t, ts.addr)
	b.login(ts.name, defaultOpKeys()) // same ISID, TSIH 0: replaces a
	a.expectClosed()
	b.nop(nil)
	// Another ISID is a separate session.
	c := dialInit(t, ts.addr)
	c.isid[5] = 0x99
	c.login(ts.name, defaultOpKeys())
	b.nop(nil)
	c.nop(nil)
	ss := ts.srv.ListSessions()
	must(t, len(ss) == 2 && ss[0].TSIH == b.tsih && ss[1].TSIH == c.tsih, "sessions %+v", ss)
	must(t, ss[1].Target == ts.name && ss[1].Initiator == testInitiatorName && ss[1].ISID[5] == 0x99 &&
		len(ss[1].Remotes) == 1 && ss[1].Remotes[0] == c.nc.LocalAddr().String(), "session info %+v", ss[1])
	// Joining an unknown session fails.
	d := dialInit(t, ts.addr)
	d.tsih = 0x7777
	r, _ := d.loginPDU(0, 1, true, kvText("InitiatorName", testInitiatorName, "TargetName", ts.name, "AuthMethod", "None"))
	if loginStatus(r) == 0 {
		r, _ = d.loginPDU(1, 3, true, defaultOpKeys().text())
	}
	must(t, loginStatus(r) == loginSessionNotExist, "status %#x", loginStatus(r))
}

func TestConnectionReinstatement(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	a := dialInit(t, ts.addr)
	a.login(ts.name, defaultOpKeys())
	b := dialInit(t, ts.addr)
	b.tsih = a.tsih
	b.cmdSN = a.cmdSN
	b.login(ts.name, defaultOpKeys())
	must(t, b.tsih == a.tsih, "tsih %d, want %d", b.tsih, a.tsih)
	a.expectClosed()
	b.nop(nil)
}

func TestRemoveTargetClosesSessions(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	if err := ts.srv.RemoveTarget(ts.name); err != nil {
		t.Fatal(err)
	}
	in.expectClosed()
	in = dialInit(t, ts.addr)
	r, _ := in.loginPDU(0, 1, true, kvText("InitiatorName", testInitiatorName, "TargetName", ts.name))
	must(t, loginStatus(r) == loginNotFound, "status %#x", loginStatus(r))
	must(t, ts.srv.RemoveTarget(ts.name) != nil, "second remove succeeded")
	must(t, ts.srv.AddTarget(Target{Name: "bad name", LU: newMemLU(1)}) != nil, "bad name accepted")
}

func TestServerCloseIdempotent(t *testing.T) {
	ts := startServer(t, Config{}, nil)
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	half := dialInit(t, ts.addr) // stuck in login
	half.nc.Write([]byte{0x43})
	ts.srv.Close()
	ts.srv.Close()
	in.expectClosed()
	half.expectClosed()
	must(t, ts.srv.AddTarget(Target{Name: IQN("x"), LU: newMemLU(1)}) != nil, "AddTarget after Close")
}

func TestTextInNormalSession(t *testing.T) {
	ts := startServer(t, Config{Portals: []string{"192.0.2.1:3260", "[2001:db8::1]:3260"}}, nil)
	if err := ts.srv.AddTarget(Target{Name: IQN("other"), LU: newMemLU(8)}); err != nil {
		t.Fatal(err)
	}
	in := dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
	var h bhs
	h[0] = opTextReq
	h[1] = flagFinal
	h.putU32(16, in.nextITT())
	h.putU32(20, reservedTag)
	h.putU32(24, in.cmdSN)
	in.cmdSN++
	in.send(&h, kvText("SendTargets", "", "X-com.example.k", "v", "MaxBurstLength", "512"))
	r, d := in.recv()
	must(t, r.opcode() == opTextRsp && r.final(), "opcode %#x", r.opcode())
	want := "TargetName=" + ts.name + "\x00TargetAddress=192.0.2.1:3260,1\x00TargetAddress=[2001:db8::1]:3260,1\x00" +
		"X-com.example.k=NotUnderstood\x00MaxBurstLength=Reject\x00"
	must(t, string(d) == want, "text response %q, want %q", d, want)
	in.nop(nil) // the non-immediate Text request advanced CmdSN correctly
}

func TestDiscoveryCHAP(t *testing.T) {
	ts := startServer(t, Config{DiscoveryCHAP: &CHAP{User: "disc", Secret: "discovery-secret"}}, nil)
	in := dialInit(t, ts.addr)
	r, m := in.loginPDU(0, 1, true, kvText("InitiatorName", testInitiatorName, "SessionType", "Discovery", "AuthMethod", "None"))
	must(t, loginStatus(r) == loginAuthFailure, "discovery without CHAP: status %#x %v", loginStatus(r), m)

	in = dialInit(t, ts.addr)
	r, m = in.loginPDU(0, 1, true, kvText("InitiatorName", testInitiatorName, "SessionType", "Discovery", "AuthMethod", "CHAP"))
	must(t, loginStatus(r) == 0 && m["AuthMethod"] == "CHAP", "status %#x %v", loginStatus(r), m)
	_, m = in.loginPDU(0, 1, false, kvText("CHAP_A", "5"))
	id, _ := parseCHAPID(m["CHAP_I"])
	chal, _ := decodeCHAPBinary(m["CHAP_C"])
	r, _ = in.loginPDU(0, 1, true, kvText("CHAP_N", "disc", "CHAP_R", encodeCHAPBinary(chapResponse(id, "discovery-secret", chal))))
	must(t, loginStatus(r) == 0, "status %#x", loginStatus(r))
	in.operational(r, defaultOpKeys())

	// Normal sessions of a target without CHAP stay open.
	in = dialInit(t, ts.addr)
	in.login(ts.name, defaultOpKeys())
}
