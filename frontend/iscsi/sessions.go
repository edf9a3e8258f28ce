package iscsi

// Sessions returns the number of logged-in normal sessions to the target
// called name (full iSCSI name, see IQN). Discovery sessions are not
// counted. A volume manager uses it to refuse deleting a volume that is
// attached.
func (s *Server) Sessions(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.targets[name]
	if t == nil {
		return 0
	}
	n := 0
	for _, ss := range s.sessions {
		if ss.target == t {
			n++
		}
	}
	return n
}
