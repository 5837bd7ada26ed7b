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


#if (NGX_HTTP_V2)

/* ngx_http_v2_srv_conf_t: ngx_http_v2_module.h before 1.25.1, ngx_http_v2.h since. */
#if (nginx_version < 1025001)
#include <ngx_http_v2_module.h>
#endif


/*
 * The stream index mask of an HTTP/2 connection's server (its streams_index
 * has mask + 1 buckets), found through the module's ctx_index, which the
 * caller takes from the cycle's module list; -1 if the configuration is not
 * there.
 */
ngx_int_t
ngx_memory_status_h2_streams_index_mask(ngx_http_v2_connection_t *h2c,
    ngx_uint_t ctx_index)
{
    ngx_http_v2_srv_conf_t  *h2scf;

    if (h2c->http_connection == NULL || h2c->http_connection->conf_ctx == NULL) {
        return -1;
    }

    h2scf = h2c->http_connection->conf_ctx->srv_conf[ctx_index];

    if (h2scf == NULL) {
        return -1;
    }

    return (ngx_int_t) h2scf->streams_index_mask;
}

#endif
