/*
 * libFuzzer target for the ambit-cni plugin's JSON scanner (native/cni/ambit-cni.c), built with
 * AddressSanitizer and UndefinedBehaviorSanitizer by build.sh. The plugin is compiled in whole
 * (its main renamed by -Dmain=ambit_cni_main), so the fuzzer drives the very functions the
 * plugin runs on the network config it reads from stdin: parse_config (the validating scanner,
 * the top-level members, cniVersion/socket/timeoutSeconds decoding) and, on the same bytes,
 * parse_answer (the agent's "<code>\n<body>") and put_json_string (the request's strings).
 * A crash is an ASan/UBSan report, an abort, or a timeout; a config the scanner accepts must
 * also be one whose recorded members lie inside the input.
 */
#include "../ambit-cni.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/*
	 * As read_stdin leaves it (the input, then a NUL), but with no spare capacity, so that a
	 * read past the NUL is an ASan report rather than a read of slack.
	 */
	struct buf in = { malloc(size + 1), size, size + 1 };
	if (!in.data)
		return 0;
	memcpy(in.data, data, size);
	in.data[size] = '\0';
	static struct config cfg; /* g_version may point into it */
	const char *why = NULL;
	if (parse_config(&in, &cfg, &why) == 0) {
		const char *lo = in.data, *hi = in.data + in.len;
		struct span spans[] = { cfg.doc, cfg.version, cfg.socket, cfg.prev, cfg.timeout };
		for (size_t k = 0; k < sizeof spans / sizeof spans[0]; k++)
			if (spans[k].p && (spans[k].p < lo || spans[k].p + spans[k].n > hi))
				__builtin_trap();
		if (strlen(cfg.socket_path) >= sizeof cfg.socket_path || !(cfg.timeout_s > 0))
			__builtin_trap();
		struct buf out = { 0 };
		put_json_string(&out, cfg.socket_path);
		put_json_string(&out, g_version);
		free(out.data);
	} else if (!why) {
		__builtin_trap(); /* every refusal names its reason */
	}
	g_version = DEFAULT_VERSION;

	struct span body;
	parse_answer(&in, &body);
	struct buf out = { 0 };
	put_json_string(&out, in.data); /* stops at the first NUL, as for an environment variable */
	free(out.data);
	free(in.data);
	return 0;
}
