package main

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton/periodic"
)

// routes is the service's HTTP API:
//
//	POST /v1/audit        {"txn_id": "...", "payload": {...}} -> 202 {"id": N, "status": "pending"}
//	GET  /v1/audit/{id}   202 while the hash is pending, 200 with the hash once done
//	GET  /health/jobs     the periodic jobs' health (200, or 503 when one is stale)
func routes(pool *pgxpool.Pool, s *periodic.Scheduler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/audit", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			TxnID   string          `json:"txn_id"`
			Payload json.RawMessage `json:"payload"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&in); err != nil || in.TxnID == "" || len(in.Payload) == 0 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "want {\"txn_id\": \"...\", \"payload\": {...}}"})
			return
		}
		var id int64
		if err := pool.QueryRow(r.Context(), `INSERT INTO audit_records (txn_id, payload) VALUES ($1, $2) RETURNING id`,
			in.TxnID, []byte(in.Payload)).Scan(&id); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		w.Header().Set("Location", "/v1/audit/"+strconv.FormatInt(id, 10))
		writeJSON(w, http.StatusAccepted, map[string]any{"id": id, "status": "pending"})
	})
	mux.HandleFunc("GET /v1/audit/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "id must be an integer"})
			return
		}
		var status string
		var hash *string
		err = pool.QueryRow(r.Context(), `SELECT hash_status, hash FROM audit_records WHERE id = $1`, id).Scan(&status, &hash)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such audit record"})
		case err != nil:
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		case status == "pending":
			w.Header().Set("Retry-After", "5")
			writeJSON(w, http.StatusAccepted, map[string]any{"id": id, "status": status})
		case status == "complete" && hash != nil:
			writeJSON(w, http.StatusOK, map[string]any{"id": id, "status": status, "hash": *hash})
		default:
			writeJSON(w, http.StatusInternalServerError, map[string]any{"id": id, "status": status})
		}
	})
	mux.Handle("GET /health/jobs", s.HealthHandler())
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
