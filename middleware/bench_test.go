package middleware

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
)

// counterHandler is scripts/benchhttp's handler: read a counter from the
// session, and on /write increment and save it.
func counterHandler(w http.ResponseWriter, r *http.Request) {
	s := FromContext(r.Context())
	var n int64
	if err := s.GetInto("counter", &n); err != nil && !errors.Is(err, ErrKeyNotFound) {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if r.URL.Path == "/write" {
		n++
		s.Set("counter", n)
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Write(strconv.AppendInt(nil, n, 10))
}

// BenchmarkMiddlewareMemory is the cost of the session layer per request
// on MemoryStore (the handler and httptest's recorder included), over 1000
// sessions, as the HTTP benchmark's kado-memory stack.
func BenchmarkMiddlewareMemory(b *testing.B) {
	for _, path := range []string{"/write", "/read"} {
		b.Run(path[1:], func(b *testing.B) {
			store := NewMemoryStore(MemoryOptions{})
			defer store.Close()
			h := New(Options{Store: store})(http.HandlerFunc(counterHandler))
			cookies := make([]string, 1000)
			for i := range cookies {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest("GET", "/write", nil))
				cookies[i] = rec.Result().Cookies()[0].String()
			}
			reqs := make([]*http.Request, len(cookies))
			for i, c := range cookies {
				reqs[i] = httptest.NewRequest("GET", path, nil)
				reqs[i].Header.Set("Cookie", c)
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, reqs[i%len(reqs)])
					if rec.Code != http.StatusOK {
						b.Fatalf("HTTP %d", rec.Code)
					}
					i++
				}
			})
		})
	}
}
