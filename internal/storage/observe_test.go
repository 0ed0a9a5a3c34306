package storage

import (
	"net/http/httptest"
	"testing"
)

func TestS3RequestsAreTimedByOperation(t *testing.T) {
	for _, c := range []struct{ method, target, op string }{
		{"HEAD", "/bucket/media/a.jpg", OpStat},
		{"DELETE", "/bucket/media/a.jpg", OpRemove},
		{"POST", "/bucket/?delete=", OpRemove},
		{"GET", "/bucket/?list-type=2&prefix=media%2F", OpList},
		{"GET", "/bucket/?location=", OpOther},
		{"PUT", "/bucket/media/a.jpg", OpOther},
	} {
		if got := s3Op(httptest.NewRequest(c.method, c.target, nil)); got != c.op {
			t.Errorf("%s %s: op %q, want %q", c.method, c.target, got, c.op)
		}
	}
}
