package tunnel

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Overload protection of the stub side. Three limits decide whether an
// agent's handshake is taken now or the agent is told to come back later
// (503 with a Retry-After spread at random over RetryAfterMin..RetryAfterMax,
// so refused agents do not return in lock-step):
//
//   - MaxHandshakes: handshakes in progress at once (checking join secrets,
//     setting up the session);
//   - MaxHandshakesPerSecond: a token bucket over handshakes started, which
//     spreads the cost of a fleet reconnecting (one TLS handshake, one
//     secret check and one yamux session each) over time;
//   - MaxSessions: agent sessions held by this stub, so a stub never takes
//     more agents than it was sized for; the rest wait or go to another
//     replica.

// DefaultMaxSessions is ServerConfig.MaxSessions' default.
const DefaultMaxSessions = 10000

// admission is one handshake's hold on the stub's limits: a handshake slot
// for the handshake's duration and a session slot until the session ends
// (or at once, if the handshake fails).
type admission struct {
	s    *Server
	kept bool
}

// admit takes a handshake slot, a rate token and a session slot, or answers
// 503 with a jittered Retry-After and returns nil.
func (s *Server) admit(w http.ResponseWriter) *admission {
	select {
	case s.handshakes <- struct{}{}:
	default:
		s.busy(w, "stub is busy with other agents' handshakes: come back after Retry-After")
		return nil
	}
	if s.rate != nil && !s.rate.take(time.Now()) {
		<-s.handshakes
		s.busy(w, "stub takes no more agent handshakes per second now: come back after Retry-After")
		return nil
	}
	s.mu.Lock()
	full := s.held >= s.maxSessions
	closed := s.closed
	if !full && !closed {
		s.held++
	}
	s.mu.Unlock()
	if full || closed {
		<-s.handshakes
		if closed {
			s.busy(w, "stub is shutting down: come back after Retry-After (or to another replica)")
		} else {
			s.busy(w, "stub holds as many agent sessions as it may (tunnel.maxSessions): come back after Retry-After")
		}
		return nil
	}
	return &admission{s: s}
}

// keep hands the session slot to the session: it is released by
// sessionEnded when the session's watcher sees it end.
func (a *admission) keep() { a.kept = true }

// done releases the handshake slot and, unless kept, the session slot.
func (a *admission) done() {
	<-a.s.handshakes
	if !a.kept {
		a.s.sessionEnded()
	}
}

func (s *Server) sessionEnded() {
	s.mu.Lock()
	s.held--
	s.mu.Unlock()
}

// busy refuses with 503 and a Retry-After drawn at random, in whole seconds,
// from [RetryAfterMin, RetryAfterMax].
func (s *Server) busy(w http.ResponseWriter, msg string) {
	wait := s.retryMin + rand.N(s.retryMax-s.retryMin+time.Second)
	w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)))
	s.refused.Add(1)
	refuse(w, http.StatusServiceUnavailable, msg)
}

// Refused is how many handshakes this server has told to come back later.
func (s *Server) Refused() int64 { return s.refused.Load() }

// tokenBucket allows perSecond events a second on average, and bursts of up
// to burst.
type tokenBucket struct {
	mu        sync.Mutex
	perSecond float64
	burst     float64
	tokens    float64
	last      time.Time
}

func newTokenBucket(perSecond, burst int) *tokenBucket {
	return &tokenBucket{perSecond: float64(perSecond), burst: float64(burst), tokens: float64(burst), last: time.Now()}
}

// take spends a token if there is one at now.
func (b *tokenBucket) take(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(b.burst, b.tokens+d.Seconds()*b.perSecond)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
