// A Go nil dereference in a function of its own (not inlined, no frame
// of its own: the faulting pc is its first instruction), under another,
// under main.main. Run with GOTRACEBACK=crash: Go prints its traceback,
// then re-raises SIGABRT with the default action from its signal handler,
// on the signal stack.
package main

import "os"

type node struct{ val int }

//go:noinline
func goCrash(n *node) int {
	return n.val + 1
}

//go:noinline
func goMiddle(n *node) int {
	return goCrash(n) * 2
}

func main() {
	var n *node
	if len(os.Args) > 5 {
		n = &node{}
	}
	os.Exit(goMiddle(n))
}
