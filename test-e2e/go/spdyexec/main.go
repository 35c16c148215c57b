// spdyexec: a remotecommand (v4/v5.channel.k8s.io) exec client over SPDY/3.1, built by the
// e2e tests from Debian's golang-github-docker-spdystream-dev (moby/spdystream, the SPDY
// implementation client-go uses) in GOPATH mode. It does what client-go's StreamExecutor
// does for a non-TTY exec: upgrade, open error/stdin/stdout/stderr streams, copy, and exit
// with the code in the error stream's metav1.Status.
//
// With "tty=WxH" it does what client-go does for a TTY exec: no stderr stream, a resize
// stream on which it sends the size (client-go's TerminalSize JSON).
//
// With "portforward=PORT bytes=N conns=K" it speaks portforward.k8s.io as client-go's
// PortForwarder does: per connection an error and a data stream sharing a requestID; it
// sends N random bytes on each of K concurrent connections and checks that the same bytes
// come back (an echo server), then that the error stream is empty.
//
// With "expect=TEXT" (attach) it reads stdout until TEXT appears, then hangs up: detaching.
//
// With "proto=NAME" it offers only that remotecommand version; before v4 the error stream
// carries the failure's text (nothing on success), which it prints, exiting 1; v1 and v2
// have no resize stream.
//
// An https:// URL is dialled with crypto/tls, verifying the server against the CA in
// "ca=PEM" (the system's CAs without it).
//
// Usage: spdyexec URL [stdin] [tty=WxH] [expect=TEXT] [proto=NAME] [ca=PEM]
// [portforward=PORT bytes=N conns=K].
// Exit codes: the command's; 100 when the upgrade is refused
// (the HTTP status line goes to stderr); 101 for any other failure.
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"io/ioutil"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/spdystream"
)

type bufConn struct {
	net.Conn
	r io.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "spdyexec: "+format+"\n", args...)
	os.Exit(101)
}

type status struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Reason  string `json:"reason"`
	Details *struct {
		Causes []struct {
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"causes"`
	} `json:"details"`
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: spdyexec URL [stdin]")
	}
	withStdin := false
	tty := ""
	pf := ""
	pfBytes, pfConns := 0, 1
	expect := ""
	caFile := ""
	protos := []string{"v5.channel.k8s.io", "v4.channel.k8s.io"}
	for _, a := range os.Args[2:] {
		if a == "stdin" {
			withStdin = true
		} else if strings.HasPrefix(a, "tty=") {
			tty = strings.TrimPrefix(a, "tty=")
		} else if strings.HasPrefix(a, "portforward=") {
			pf = strings.TrimPrefix(a, "portforward=")
		} else if strings.HasPrefix(a, "bytes=") {
			pfBytes, _ = strconv.Atoi(strings.TrimPrefix(a, "bytes="))
		} else if strings.HasPrefix(a, "proto=") {
			protos = []string{strings.TrimPrefix(a, "proto=")}
		} else if strings.HasPrefix(a, "expect=") {
			expect = strings.TrimPrefix(a, "expect=")
		} else if strings.HasPrefix(a, "ca=") {
			caFile = strings.TrimPrefix(a, "ca=")
		} else if strings.HasPrefix(a, "conns=") {
			pfConns, _ = strconv.Atoi(strings.TrimPrefix(a, "conns="))
		} else {
			fail("unknown argument %q", a)
		}
	}
	if pf != "" {
		portForward(upgrade(os.Args[1], []string{"portforward.k8s.io"}, caFile), pf, pfBytes, pfConns)
		return
	}
	conn := upgrade(os.Args[1], protos, caFile)
	jsonStatus := protos[0] == "v5.channel.k8s.io" || protos[0] == "v4.channel.k8s.io"
	resizable := jsonStatus || protos[0] == "v3.channel.k8s.io"
	open := func(kind string) *spdystream.Stream {
		h := http.Header{}
		h.Set("streamType", kind)
		s, err := conn.CreateStream(h, nil, false)
		if err != nil {
			fail("create %s stream: %v", kind, err)
		}
		if err := s.WaitTimeout(30 * time.Second); err != nil {
			fail("%s stream reply: %v", kind, err)
		}
		return s
	}
	errStream := open("error")
	var stdin *spdystream.Stream
	if withStdin {
		stdin = open("stdin")
	}
	stdout := open("stdout")
	var stderr *spdystream.Stream
	if tty == "" {
		stderr = open("stderr")
	} else {
		var w, h uint16
		if _, err := fmt.Sscanf(tty, "%dx%d", &w, &h); err != nil {
			fail("tty=%s: %v", tty, err)
		}
		if resizable {
			resize := open("resize")
			size := struct{ Width, Height uint16 }{w, h}
			if err := json.NewEncoder(resize).Encode(&size); err != nil {
				fail("resize: %v", err)
			}
		}
	}
	if stdin != nil {
		go func() {
			io.Copy(stdin, os.Stdin)
			stdin.Close()
		}()
	}
	var wg sync.WaitGroup
	wg.Add(2)
	if expect != "" {
		// Attach: read stdout until it shows `expect`, then detach (hang up), exit 0.
		var seen []byte
		buf := make([]byte, 32*1024)
		for !bytes.Contains(seen, []byte(expect)) {
			n, err := stdout.Read(buf)
			os.Stdout.Write(buf[:n])
			seen = append(seen, buf[:n]...)
			if err != nil {
				msg, _ := ioutil.ReadAll(errStream)
				fail("stdout ended before %q appeared: %s", expect, msg)
			}
		}
		conn.Close()
		os.Exit(0)
	}
	go func() { io.Copy(os.Stdout, stdout); wg.Done() }()
	go func() {
		if stderr != nil {
			io.Copy(os.Stderr, stderr)
		}
		wg.Done()
	}()
	msg, err := ioutil.ReadAll(errStream)
	if err != nil {
		fail("error stream: %v", err)
	}
	wg.Wait()
	conn.Close()
	if !jsonStatus {
		if len(msg) > 0 {
			fmt.Fprintf(os.Stderr, "%s\n", msg)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(msg) == 0 {
		fail("empty error stream")
	}
	var st status
	if err := json.Unmarshal(msg, &st); err != nil {
		fail("status %q: %v", msg, err)
	}
	if st.Status == "Success" {
		os.Exit(0)
	}
	if st.Reason == "NonZeroExitCode" && st.Details != nil {
		for _, c := range st.Details.Causes {
			if c.Reason == "ExitCode" {
				code, err := strconv.Atoi(c.Message)
				if err == nil {
					os.Exit(code)
				}
			}
		}
	}
	fail("exec failed: %s", msg)
}

// upgrade makes the HTTP upgrade to SPDY/3.1 offering protocols, or exits 100 if refused.
func upgrade(target string, protocols []string, caFile string) *spdystream.Connection {
	u, err := url.Parse(target)
	if err != nil {
		fail("url: %v", err)
	}
	var raw net.Conn
	if u.Scheme == "https" {
		config := &tls.Config{}
		if caFile != "" {
			pem, err := ioutil.ReadFile(caFile)
			if err != nil {
				fail("ca: %v", err)
			}
			config.RootCAs = x509.NewCertPool()
			if !config.RootCAs.AppendCertsFromPEM(pem) {
				fail("ca: no certificate in %s", caFile)
			}
		}
		raw, err = tls.Dial("tcp", u.Host, config)
	} else {
		raw, err = net.Dial("tcp", u.Host)
	}
	if err != nil {
		fail("dial: %v", err)
	}
	req, _ := http.NewRequest("POST", u.String(), nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	for _, p := range protocols {
		req.Header.Add("X-Stream-Protocol-Version", p)
	}
	if err := req.Write(raw); err != nil {
		fail("request: %v", err)
	}
	br := bufio.NewReader(raw)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		fail("response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := ioutil.ReadAll(resp.Body)
		fmt.Fprintf(os.Stderr, "upgrade refused: %s: %s", resp.Status, body)
		os.Exit(100)
	}
	proto := resp.Header.Get("X-Stream-Protocol-Version")
	ok := false
	for _, p := range protocols {
		ok = ok || p == proto
	}
	if !ok {
		fail("negotiated protocol %q", proto)
	}
	conn, err := spdystream.NewConnection(&bufConn{raw, br}, false)
	if err != nil {
		fail("spdy: %v", err)
	}
	go conn.Serve(spdystream.NoOpStreamHandler)
	return conn
}

func portForward(conn *spdystream.Connection, port string, n, conns int) {
	var wg sync.WaitGroup
	errs := make(chan string, conns)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			open := func(kind string) *spdystream.Stream {
				h := http.Header{}
				h.Set("streamType", kind)
				h.Set("port", port)
				h.Set("requestID", strconv.Itoa(i))
				s, err := conn.CreateStream(h, nil, false)
				if err == nil {
					err = s.WaitTimeout(30 * time.Second)
				}
				if err != nil {
					fail("create %s stream: %v", kind, err)
				}
				return s
			}
			errStream := open("error")
			data := open("data")
			payload := make([]byte, n)
			rand.New(rand.NewSource(int64(i))).Read(payload)
			go func() {
				for off := 0; off < n; off += 32 * 1024 {
					end := off + 32*1024
					if end > n {
						end = n
					}
					if _, err := data.Write(payload[off:end]); err != nil {
						break
					}
				}
				data.Close()
			}()
			got, _ := ioutil.ReadAll(data)
			msg, _ := ioutil.ReadAll(errStream)
			if len(msg) > 0 {
				errs <- fmt.Sprintf("connection %d: %s", i, msg)
			} else if !bytes.Equal(got, payload) {
				errs <- fmt.Sprintf("connection %d: %d bytes back of %d, or altered", i, len(got), n)
			}
		}(i)
	}
	wg.Wait()
	conn.Close()
	close(errs)
	failed := false
	for e := range errs {
		fmt.Fprintln(os.Stderr, e)
		failed = true
	}
	if failed {
		os.Exit(102)
	}
	fmt.Printf("forwarded %d bytes each way on %d connections\n", n, conns)
}
