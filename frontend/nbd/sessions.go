package nbd

// Sessions returns the number of open connections bound to the export
// called name (connections still negotiating, or bound to another export,
// are not counted). A volume manager uses it to refuse deleting a volume
// that is attached.
func (s *Server) Sessions(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		if c.exp != nil && c.exp.name == name {
			n++
		}
	}
	return n
}
