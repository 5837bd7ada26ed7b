/*
 * The request bitfields the module reads or writes, compiled against the very
 * nginx tree the module is built for: a bitfield's place is the C compiler's
 * to decide, and bindgen has placed some wrongly (nginx >= 1.29.3 added a
 * field before ngx_http_request_t's bitfields). Only field accesses: this file
 * links no nginx symbol.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


ngx_uint_t
ngx_memory_status_header_only(ngx_http_request_t *r)
{
    return r->header_only;
}


/* Keeps the main request alive while an answer is measured off the loop. */
void
ngx_memory_status_main_count_inc(ngx_http_request_t *r)
{
    r->main->count++;
}
