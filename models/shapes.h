// The shape letters used in every name and comment under models/ and parallel/:
//   B  sequences in a micro-batch          T  positions per sequence (model.seq_len)
//   N  rows (tokens) in a flat batch, N = B*T in the model; any row count in kernels
//   D  model width                         H  attention heads, D = H * Dh
//   V  vocabulary                          F  FFN hidden width (d_ff or d_ff_expert)
//   E  routed experts (global count)       K  experts per token (top_k)
//   R  rows received by this rank's experts after dispatch (grouped by local expert)
// Conventions (llm.c): outputs first, then inputs, then sizes; a backward function ADDS into
// every gradient buffer it is given (callers zero them), nullptr means "not wanted".
#pragma once
