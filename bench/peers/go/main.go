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
// set with runtime.GOMAXPROCS before each case.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
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
	flag.Parse()
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
	if failed {
		fmt.Println("RESULT error wrong_total -")
		os.Exit(1)
	}
}
