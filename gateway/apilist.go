package gateway

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"time"
)

// clusterCursor is where a cluster-wide listing of devices goes on: in
// node Node at the registry's cursor Inner, or, when After is set, at the
// first live node named after Node. The nodes are taken in name order.
type clusterCursor struct {
	Node  string
	Inner string
	After bool
}

func (c clusterCursor) String() string {
	sep := "\x00"
	if c.After {
		sep = "\x01"
	}
	return base64.RawURLEncoding.EncodeToString([]byte(c.Node + sep + c.Inner))
}

func parseClusterCursor(s string) (clusterCursor, error) {
	if s == "" {
		return clusterCursor{}, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return clusterCursor{}, errBadCursor
	}
	node, inner, ok := strings.Cut(string(b), "\x00")
	if ok {
		return clusterCursor{Node: node, Inner: inner}, nil
	}
	node, rest, ok := strings.Cut(string(b), "\x01")
	if !ok || rest != "" {
		return clusterCursor{}, errBadCursor
	}
	return clusterCursor{Node: node, After: true}, nil
}

var errBadCursor = errors.New("cursor: not one a node of this cluster gave out; list again without cursor")

// listCalls bounds the registry reads of one page of a cluster-wide
// listing: a mode filter can make each read short, and the answer then
// ends early with a cursor, as a filtered page may.
const listCalls = 16

// listCluster answers GET /v1/clients without node on a cluster node: the
// devices of every live node, from the cluster's registry, node after
// node in name order, each node's in its registry order. A device
// connected throughout the listing is listed once; one that connects,
// leaves or moves meanwhile may be listed once, twice (on two nodes) or
// not at all, and a node that dies meanwhile lists nothing more.
func (g *Gateway) listCluster(w http.ResponseWriter, r *http.Request, mode, cursor string, limit int) {
	cur, err := parseClusterCursor(cursor)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*g.cfg.ClusterTimeout)
	defer cancel()
	live, err := g.members.m.LiveNodes(ctx)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "cluster registry: "+err.Error())
		return
	}
	out := clientList{Clients: []clientItem{}}
	calls := 0
	for _, n := range live {
		if n.ID < cur.Node || (n.ID == cur.Node && cur.After) {
			continue
		}
		inner := ""
		if n.ID == cur.Node {
			inner = cur.Inner
		}
		for {
			if len(out.Clients) == limit || calls == listCalls {
				// Full, or enough reads for one answer: go on from here.
				out.NextCursor = clusterCursor{Node: n.ID, Inner: inner}.String()
				writeJSON(w, http.StatusOK, out)
				return
			}
			calls++
			recs, next, err := g.members.m.List(ctx, n.ID, mode, inner, limit-len(out.Clients))
			if err != nil {
				writeError(w, http.StatusServiceUnavailable, "cluster registry: "+err.Error())
				return
			}
			for _, rec := range recs {
				out.Clients = append(out.Clients, clientItem{ClientID: rec.ClientID, Mode: string(rec.Mode), Protocol: rec.Protocol,
					Since: time.UnixMilli(rec.Since).UTC(), Node: rec.Node})
			}
			if next == "" {
				break // this node is done
			}
			inner = next
		}
		if len(out.Clients) == limit {
			out.NextCursor = clusterCursor{Node: n.ID, After: true}.String()
			writeJSON(w, http.StatusOK, out)
			return
		}
	}
	writeJSON(w, http.StatusOK, out)
}
