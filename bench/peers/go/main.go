// Peer: the tendril peer micro-benchmarks and skynet on Go goroutines.
// Same cases, names, units and output as bench/skynet.cpp (see
// bench/peers/README.md):
//
//	go_peers [-quick] [-reps N] [-only NAME[,NAME...]]
//
// Built offline by scripts/bench-peers.sh (GO111MODULE=off, no modules, only
// the standard library). Every case is repeated (5 times, 3 with -quick) and
// the median printed as "RESULT <benchmark> <value> <unit>" on stdout;
// progress goes to stderr. "1 worker" is GOMAXPROCS=1, "all" GOMAXPROCS=NumCPU,
// set with runtime.GOMAXPROCS before each case. The park_* cases run every
// round in a child process (this program with -park-child N).
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	leaves   = 1000000
	expected = 499999500000 // 0 + 1 + ... + 999,999
)

var sink int

// switch: two goroutines taking turns with runtime.Gosched on one P.
func switchNs(n int) float64 {
	runtime.GOMAXPROCS(1)
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		for !stop.Load() {
			runtime.Gosched()
		}
		close(done)
	}()
	for i := 0; i < 1000; i++ {
		runtime.Gosched()
	}
	t0 := time.Now()
	for i := 0; i < n; i++ {
		runtime.Gosched()
	}
	ns := float64(time.Since(t0).Nanoseconds()) / (2 * float64(n)) // a round is two switches
	stop.Store(true)
	<-done
	return ns
}

// pingpong: one int round trip over two channels of the given capacity.
func pingpongNs(procs, capacity, n int) float64 {
	runtime.GOMAXPROCS(procs)
	ping := make(chan int, capacity)
	pong := make(chan int, capacity)
	go func() {
		for v := range ping {
			pong <- v
		}
	}()
	for i := 0; i < 1000; i++ {
		ping <- i
		<-pong
	}
	t0 := time.Now()
	for i := 0; i < n; i++ {
		ping <- i
		sink += <-pong
	}
	ns := float64(time.Since(t0).Nanoseconds()) / float64(n)
	close(ping)
	return ns
}

// spawn_join: start an empty goroutine and wait for it (sync.WaitGroup).
func spawnJoinNs(procs, n int) float64 {
	runtime.GOMAXPROCS(procs)
	var wg sync.WaitGroup
	body := func() { wg.Done() }
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go body()
		wg.Wait()
	}
	t0 := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go body()
		wg.Wait()
	}
	return float64(time.Since(t0).Nanoseconds()) / float64(n)
}

// ---- skynet ----

var alive, peak int64
var counting bool

// A goroutine counts from just before its go statement until it returns.
func noteSpawn() {
	if counting {
		now := atomic.AddInt64(&alive, 1)
		for {
			p := atomic.LoadInt64(&peak)
			if now <= p || atomic.CompareAndSwapInt64(&peak, p, now) {
				break
			}
		}
	}
}

func noteExit() {
	if counting {
		atomic.AddInt64(&alive, -1)
	}
}

// The classic: each node sends its result on out (unbuffered channels).
func skynetChan(out chan<- int, num, size int) {
	defer noteExit()
	if size == 1 {
		out <- num
		return
	}
	rc := make(chan int)
	sub := size / 10
	for i := 0; i < 10; i++ {
		noteSpawn()
		go skynetChan(rc, num+i*sub, sub)
	}
	sum := 0
	for i := 0; i < 10; i++ {
		sum += <-rc
	}
	out <- sum
}

// Join variant: children write their result to a slot, the parent waits on a
// WaitGroup (Go's nearest thing to join).
func skynetJoin(num, size int) int {
	if size == 1 {
		return num
	}
	var res [10]int
	var wg sync.WaitGroup
	sub := size / 10
	wg.Add(10)
	for i := 0; i < 10; i++ {
		go func(i int) {
			res[i] = skynetJoin(num+i*sub, sub)
			wg.Done()
		}(i)
	}
	wg.Wait()
	sum := 0
	for _, r := range res {
		sum += r
	}
	return sum
}

var total int

func skynetChanMs() float64 {
	runtime.GOMAXPROCS(runtime.NumCPU())
	t0 := time.Now()
	out := make(chan int)
	noteSpawn()
	go skynetChan(out, 0, leaves)
	total = <-out
	return float64(time.Since(t0).Nanoseconds()) / 1e6
}

func skynetJoinMs() float64 {
	runtime.GOMAXPROCS(runtime.NumCPU())
	t0 := time.Now()
	done := make(chan int)
	go func() { done <- skynetJoin(0, leaves) }()
	total = <-done
	return float64(time.Since(t0).Nanoseconds()) / 1e6
}

// ---- park: many parked goroutines on one gate ----

// One round of the park cases, run in a child process of its own (this
// program re-executed with -park-child N): Go never frees a goroutine's g
// and keeps stacks in free lists, so a second round in the same process would
// reuse the first one's memory. The child spawns N goroutines that each count
// themselves and park in gate.Wait() (a sync.WaitGroup at 1); the main
// goroutine waits (Gosched) until the count is N, reads VmRSS/VmPTE, then
// calls gate.Done() once and waits on a second WaitGroup that every goroutine
// leaves with Done() after its Wait returns.
type parkRound struct {
	spawnNs, wakeNs, rss, pte float64
}

func statusBytes(key string) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, key+":") {
			var v float64
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(l, key+":")), "%f", &v)
			return v * 1024 // kB
		}
	}
	return 0
}

func parkChild(n int) {
	runtime.GOMAXPROCS(runtime.NumCPU())
	runtime.GC()
	rss0, pte0 := statusBytes("VmRSS"), statusBytes("VmPTE")
	var gate, done sync.WaitGroup
	var parked int64
	gate.Add(1)
	done.Add(n)
	step := n
	if n >= 1000000 {
		step = 250000
	}
	t0 := time.Now()
	for i := 0; i < n; i++ {
		go func() {
			atomic.AddInt64(&parked, 1)
			gate.Wait()
			done.Done()
		}()
		if (i+1)%step == 0 && i+1 < n {
			fmt.Fprintf(os.Stderr, "  %d spawned\n", i+1)
		}
	}
	for atomic.LoadInt64(&parked) < int64(n) {
		runtime.Gosched()
	}
	var r parkRound
	r.spawnNs = float64(time.Since(t0).Nanoseconds())
	// Let the last few goroutines finish parking before reading memory (untimed).
	time.Sleep(20 * time.Millisecond)
	r.rss = statusBytes("VmRSS") - rss0
	r.pte = statusBytes("VmPTE") - pte0
	t1 := time.Now()
	gate.Done()
	done.Wait()
	r.wakeNs = float64(time.Since(t1).Nanoseconds())
	fmt.Printf("PARK %.0f %.0f %.0f %.0f\n", r.spawnNs, r.wakeNs, r.rss, r.pte)
}

// parkRoundIn runs one round in a fresh child process.
func parkRoundIn(n int) (parkRound, error) {
	var r parkRound
	exe, err := os.Executable()
	if err != nil {
		return r, err
	}
	cmd := exec.Command(exe, "-park-child", strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return r, err
	}
	for _, l := range strings.Split(string(out), "\n") {
		if k, _ := fmt.Sscanf(l, "PARK %f %f %f %f", &r.spawnNs, &r.wakeNs, &r.rss, &r.pte); k == 4 {
			return r, nil
		}
	}
	return r, fmt.Errorf("no PARK line in the child's output")
}

func parkCases(quick bool) {
	for _, c := range []struct {
		n   int
		tag string
	}{{100000, "100k"}, {1000000, "1m"}} {
		spawnName, wakeName, memName := "park_spawn_"+c.tag, "park_wake_"+c.tag, "park_mem_"+c.tag
		if !wants(spawnName) && !wants(wakeName) && !wants(memName) {
			continue
		}
		// -quick leaves out the 1M rounds unless -only asks for them.
		if quick && c.n >= 1000000 && len(only) == 0 {
			continue
		}
		var spawnNs, wakeNs, mem, rss, pte []float64
		for rep := 0; rep < reps; rep++ {
			fmt.Fprintf(os.Stderr, "go: park %s, round %d/%d (fresh process)\n", c.tag, rep+1, reps)
			r, err := parkRoundIn(c.n)
			if err != nil {
				fmt.Fprintf(os.Stderr, "go: park %s: the child process failed: %v\n", c.tag, err)
				fmt.Println("RESULT error park_child_failed -")
				os.Exit(1)
			}
			n := float64(c.n)
			spawnNs = append(spawnNs, r.spawnNs/n)
			wakeNs = append(wakeNs, r.wakeNs/n)
			mem = append(mem, (r.rss+r.pte)/n)
			rss = append(rss, r.rss/n)
			pte = append(pte, r.pte/n)
			fmt.Fprintf(os.Stderr, "  spawn+park %.2f s, wake %.2f s, %.0f B per goroutine (RSS %.0f + PTE %.0f)\n",
				r.spawnNs/1e9, r.wakeNs/1e9, mem[len(mem)-1], rss[len(rss)-1], pte[len(pte)-1])
		}
		count := "100k"
		if c.n >= 1000000 {
			count = "1M"
		}
		if wants(spawnName) {
			report(spawnName, count+" goroutines started until all parked on one WaitGroup (ns/task)", "ns", spawnNs)
		}
		if wants(wakeName) {
			report(wakeName, count+" parked goroutines woken by Done(), until all finished (ns/task)", "ns", wakeNs)
		}
		if wants(memName) {
			report(memName, count+" parked goroutines: (dVmRSS + dVmPTE) / N (bytes/task)", "B", mem)
			mr, _, _ := median(rss)
			mp, _, _ := median(pte)
			fmt.Printf("go      %-20s of which RSS %.0f B, page tables %.0f B (medians)\n", memName, mr, mp)
		}
	}
}

// ---- driver ----

var reps int
var only map[string]bool
var failed bool

func wants(name string) bool {
	if len(only) == 0 {
		return true
	}
	for o := range only {
		if name == o || strings.HasPrefix(name, o+"_") {
			return true
		}
	}
	return false
}

func median(v []float64) (med, lo, hi float64) {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		med = s[n/2]
	} else {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return med, s[0], s[n-1]
}

func benchCase(name, what, unit string, f func() float64) {
	if !wants(name) {
		return
	}
	fmt.Fprintf(os.Stderr, "go: %s, %d reps\n", name, reps)
	v := make([]float64, 0, reps)
	for r := 0; r < reps; r++ {
		runtime.GC() // start each repetition without the previous one's garbage
		v = append(v, f())
	}
	report(name, what, unit, v)
}

func report(name, what, unit string, v []float64) {
	med, lo, hi := median(v)
	fmt.Printf("go      %-20s %-58s %10.1f %s (min %.1f, max %.1f, %d reps)\n", name, what, med, unit, lo, hi, len(v))
	fmt.Printf("RESULT %s %.1f %s\n", name, med, unit)
}

func checkTotal(name string) {
	if total != expected {
		fmt.Fprintf(os.Stderr, "go %s: WRONG TOTAL %d (expected %d)\n", name, total, expected)
		failed = true
	}
}

func main() {
	quick := flag.Bool("quick", false, "fewer iterations and repetitions")
	flag.IntVar(&reps, "reps", 0, "repetitions per case (default 5, 3 with -quick)")
	onlyList := flag.String("only", "", "comma-separated benchmark names (a prefix before _ selects a family)")
	parkChildN := flag.Int("park-child", 0, "internal: run one park round of N goroutines and print it")
	flag.Parse()
	if *parkChildN > 0 {
		parkChild(*parkChildN)
		return
	}
	if reps <= 0 {
		reps = 5
		if *quick {
			reps = 3
		}
	}
	only = map[string]bool{}
	for _, o := range strings.Split(*onlyList, ",") {
		if o != "" {
			only[o] = true
		}
	}
	k := 5
	mode := "full"
	if *quick {
		k = 1
		mode = "-quick"
	}
	all := runtime.NumCPU()
	fmt.Printf("go: %s, GOMAXPROCS=%d for \"all\"; %s\n", runtime.Version(), all, mode)

	benchCase("switch", "Gosched between 2 goroutines, GOMAXPROCS=1 (ns/switch)", "ns",
		func() float64 { return switchNs(200000 * k) })
	benchCase("pingpong_1", "unbuffered chan round trip, GOMAXPROCS=1", "ns",
		func() float64 { return pingpongNs(1, 0, 100000*k) })
	benchCase("pingpong_all", "unbuffered chan round trip, GOMAXPROCS=NumCPU", "ns",
		func() float64 { return pingpongNs(all, 0, 100000*k) })
	benchCase("pingpong_buffered_1", "chan(2) round trip, GOMAXPROCS=1", "ns",
		func() float64 { return pingpongNs(1, 2, 100000*k) })
	benchCase("spawn_join_1", "go + WaitGroup.Wait, GOMAXPROCS=1", "ns",
		func() float64 { return spawnJoinNs(1, 20000*k) })
	benchCase("spawn_join_all", "go + WaitGroup.Wait, GOMAXPROCS=NumCPU", "ns",
		func() float64 { return spawnJoinNs(all, 20000*k) })
	benchCase("skynet", "1M-leaf tree, chan per parent, GOMAXPROCS=NumCPU (ms)", "ms",
		func() float64 { ms := skynetChanMs(); checkTotal("skynet"); return ms })
	benchCase("skynet_join", "1M-leaf tree, WaitGroup per parent, GOMAXPROCS=NumCPU (ms)", "ms",
		func() float64 { ms := skynetJoinMs(); checkTotal("skynet_join"); return ms })
	if wants("skynet_peak") {
		fmt.Fprintf(os.Stderr, "go: skynet_peak, 1 counted run\n")
		counting = true
		skynetChanMs()
		counting = false
		checkTotal("skynet_peak")
		fmt.Printf("go      %-20s %-58s %10d goroutines\n", "skynet_peak", "most skynet goroutines started, not finished (counted run)", peak)
		fmt.Printf("RESULT skynet_peak %d tasks\n", peak)
	}
	if wants("skynet") {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		mib := float64(ru.Maxrss) / 1024
		fmt.Printf("go      %-20s %-58s %10.1f MiB\n", "maxrss", "peak resident memory of the process", mib)
		fmt.Printf("RESULT maxrss %.1f MiB\n", mib)
	}
	parkCases(*quick)
	if failed {
		fmt.Println("RESULT error wrong_total -")
		os.Exit(1)
	}
}
