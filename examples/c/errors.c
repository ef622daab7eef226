/*
 * errors.c: the C error paths of libqpq against a running qpq-server.
 *
 *   errors SERVER_ADDR CERT_DER_FILE WORK_DIR
 *
 * Wrong password and unknown users give their stable codes; NULL for every pointer argument
 * gives QPQ_ERROR_INVALID_INPUT (accessors: NULL/0/false), never a crash; a next_event blocked
 * in another thread is interrupted (QPQ_ERROR_CANCELLED) and unblocked by close
 * (QPQ_ERROR_CLOSED); a closed client answers QPQ_ERROR_CLOSED. Run under valgrind or ASan, a
 * freed handle used again by the library would show as an invalid read.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, nanosleep */
#include <qpq.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int failures = 0;
static int checks = 0;
static const char *server, *cert, *work;

static void expect_code(qpq_code want, qpq_error *err, const char *what, int line) {
    checks++;
    qpq_code got = qpq_error_code(err);
    if (got != want) {
        fprintf(stderr, "line %d: %s: want %s, got %s (%s)\n", line, what,
                want ? qpq_error_code_name(want) : "ok", got ? qpq_error_code_name(got) : "ok",
                err ? qpq_error_message(err) : "");
        failures++;
    }
    qpq_error_free(err);
}
#define EXPECT(code, call) expect_code((code), (call), #call, __LINE__)
#define OK(call) EXPECT(QPQ_OK, call)
#define NUL(call) EXPECT(QPQ_ERROR_INVALID_INPUT, call)
#define TRUE(cond)                                                        \
    do {                                                                  \
        checks++;                                                         \
        if (!(cond)) {                                                    \
            fprintf(stderr, "line %d: expected %s\n", __LINE__, #cond);   \
            failures++;                                                   \
        }                                                                 \
    } while (0)

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static qpq_config *config_for(const char *name) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", work, name);
    qpq_config *config = NULL;
    uint8_t key[32];
    memset(key, name[0], sizeof key);
    OK(qpq_config_new(dir, server, &config));
    OK(qpq_config_set_raw_key(config, key, sizeof key));
    OK(qpq_config_set_pinned_cert_file(config, cert));
    return config;
}

static qpq_client *open_client(const char *name) {
    qpq_config *config = config_for(name);
    qpq_client *client = NULL;
    OK(qpq_client_open(config, &client));
    qpq_config_free(config);
    return client;
}

static qpq_client *user(const char *name) {
    qpq_client *client = open_client(name);
    qpq_account *account = NULL;
    OK(qpq_client_register(client, name, "the password", &account));
    qpq_account_free(account);
    return client;
}

/* Every accessor tolerates NULL. */
static void accessors_take_null(void) {
    TRUE(qpq_error_code(NULL) == QPQ_OK && qpq_error_message(NULL) == NULL && qpq_error_retry_after_ms(NULL) == 0);
    TRUE(qpq_account_username(NULL) == NULL && qpq_account_identity_key(NULL) == NULL && qpq_account_device_key(NULL) == NULL);
    TRUE(qpq_conversation_name(NULL) == NULL && qpq_conversation_ciphersuite(NULL) == NULL && qpq_conversation_member(NULL, 0) == NULL);
    TRUE(qpq_conversation_get_kind(NULL) == QPQ_CONVERSATION_NONE && !qpq_conversation_post_quantum(NULL) && !qpq_conversation_active(NULL));
    TRUE(qpq_conversation_epoch(NULL) == 0 && qpq_conversation_member_count(NULL) == 0 && qpq_conversation_unread(NULL) == 0);
    qpq_conversation_id zero_conv = qpq_conversation_get_id(NULL);
    qpq_message_id zero_msg = qpq_message_get_id(NULL);
    static const uint8_t zeros[16];
    TRUE(memcmp(zero_conv.bytes, zeros, 16) == 0 && memcmp(zero_msg.bytes, zeros, 16) == 0);
    TRUE(qpq_message_sender(NULL) == NULL && qpq_message_sender_device(NULL) == NULL && qpq_message_body(NULL) == NULL);
    TRUE(qpq_message_sent_at_ms(NULL) == 0 && qpq_message_received_at_ms(NULL) == 0 && !qpq_message_outgoing(NULL));
    TRUE(qpq_message_delivery(NULL) == QPQ_DELIVERY_NONE && memcmp(qpq_message_conversation(NULL).bytes, zeros, 16) == 0);
    TRUE(qpq_member_username(NULL) == NULL && qpq_member_identity_key(NULL) == NULL && qpq_member_device_count(NULL) == 0 && qpq_member_device(NULL, 0) == NULL);
    size_t len = 99;
    TRUE(qpq_body_get_kind(NULL) == QPQ_BODY_UNKNOWN && qpq_body_text(NULL, &len) == NULL && len == 0);
    TRUE(qpq_body_content_type(NULL) == NULL && qpq_body_bytes(NULL, NULL) == NULL && qpq_body_emoji(NULL) == NULL && !qpq_body_removed(NULL));
    TRUE(qpq_body_file_name(NULL) == NULL && qpq_body_mime_type(NULL) == NULL && qpq_body_file_size(NULL) == 0 && qpq_body_file_hash_or_key(NULL, true, &len) == NULL);
    TRUE(memcmp(qpq_body_target(NULL).bytes, zeros, 16) == 0);
    TRUE(qpq_event_get_kind(NULL) == QPQ_EVENT_NONE && qpq_event_cursor(NULL) == 0 && qpq_event_message(NULL) == NULL && qpq_event_conversation(NULL) == NULL);
    TRUE(qpq_event_member_count(NULL, true) == 0 && qpq_event_member(NULL, false, 0) == NULL && qpq_event_epoch(NULL) == 0 && !qpq_event_connected(NULL));
    TRUE(qpq_event_error_code(NULL) == QPQ_OK && qpq_event_error_message(NULL) == NULL);
    TRUE(qpq_event_by(NULL) == NULL && !qpq_event_left(NULL) && qpq_event_reason(NULL) == NULL);
    TRUE(qpq_event_left_count(NULL) == 0 && qpq_event_left_member(NULL, 0) == NULL);
    TRUE(qpq_conversation_consent(NULL) == QPQ_CONSENT_NONE && qpq_conversation_invited_by(NULL) == NULL);
    TRUE(qpq_string_list_len(NULL) == 0 && qpq_string_list_get(NULL, 0) == NULL);
    TRUE(memcmp(qpq_event_conversation_id(NULL).bytes, zeros, 16) == 0 && memcmp(qpq_event_message_id(NULL).bytes, zeros, 16) == 0);
    TRUE(qpq_conversation_list_len(NULL) == 0 && qpq_conversation_list_get(NULL, 0) == NULL);
    TRUE(qpq_message_list_len(NULL) == 0 && qpq_message_list_get(NULL, 0) == NULL);
    TRUE(qpq_member_list_len(NULL) == 0 && qpq_member_list_get(NULL, 0) == NULL);
    TRUE(qpq_event_list_len(NULL) == 0 && qpq_event_list_get(NULL, 0) == NULL);
    /* Every free accepts NULL. */
    qpq_error_free(NULL); qpq_string_free(NULL); qpq_config_free(NULL); qpq_client_close(NULL); qpq_client_free(NULL);
    qpq_account_free(NULL); qpq_conversation_free(NULL); qpq_member_free(NULL); qpq_body_free(NULL); qpq_event_free(NULL);
    qpq_conversation_list_free(NULL); qpq_message_list_free(NULL); qpq_member_list_free(NULL); qpq_event_list_free(NULL);
    qpq_string_list_free(NULL);
}

/* Every fallible function, each pointer argument NULL in turn: QPQ_ERROR_INVALID_INPUT. */
static void null_arguments(qpq_client *c, qpq_conversation_id *g) {
    qpq_config *cfg = config_for("nulls");
    qpq_config *cfg_out = NULL; qpq_client *client_out = NULL; qpq_account *acc = NULL; qpq_member *mem = NULL;
    qpq_conversation_id id; qpq_message_id mid; qpq_body *body = NULL; qpq_body *b = NULL; bool created;
    qpq_conversation_list *cl = NULL; qpq_conversation *conv = NULL; qpq_message_list *ml = NULL;
    qpq_member_list *mbl = NULL; qpq_event_list *el = NULL; qpq_event *ev = NULL; char *s = NULL; uint64_t u = 0;
    qpq_string_list *sl = NULL;
    const char *names[] = {"x"}; const char *null_names[] = {NULL}; uint8_t key[32] = {0};
    OK(qpq_body_new_text("t", &body));
    NUL(qpq_config_new(NULL, "a:1", &cfg_out)); NUL(qpq_config_new("d", NULL, &cfg_out)); NUL(qpq_config_new("d", "a:1", NULL));
    NUL(qpq_config_set_passphrase(NULL, "p")); NUL(qpq_config_set_passphrase(cfg, NULL));
    NUL(qpq_config_set_raw_key(NULL, key, 32)); NUL(qpq_config_set_raw_key(cfg, NULL, 32));
    EXPECT(QPQ_ERROR_INVALID_INPUT, qpq_config_set_raw_key(cfg, key, 31));
    NUL(qpq_config_set_server_name(NULL, "n")); NUL(qpq_config_set_server_name(cfg, NULL));
    NUL(qpq_config_set_pinned_cert_file(NULL, "f")); NUL(qpq_config_set_pinned_cert_file(cfg, NULL));
    NUL(qpq_config_set_pinned_cert_der(NULL, key, 1)); NUL(qpq_config_set_pinned_cert_der(cfg, NULL, 1));
    NUL(qpq_config_set_fingerprint(NULL, "ab")); NUL(qpq_config_set_fingerprint(cfg, NULL));
    NUL(qpq_config_set_system_roots(NULL)); NUL(qpq_config_set_request_timeout_ms(NULL, 1)); NUL(qpq_config_set_lock_timeout_ms(NULL, 1));
    NUL(qpq_client_open(NULL, &client_out)); NUL(qpq_client_open(cfg, NULL));
    NUL(qpq_client_register(NULL, "u", "p", &acc)); NUL(qpq_client_register(c, NULL, "p", &acc));
    NUL(qpq_client_register(c, "u", NULL, &acc)); NUL(qpq_client_register(c, "u", "p", NULL));
    NUL(qpq_client_login(NULL, "u", "p", &acc)); NUL(qpq_client_login(c, NULL, "p", &acc));
    NUL(qpq_client_login(c, "u", NULL, &acc)); NUL(qpq_client_login(c, "u", "p", NULL));
    NUL(qpq_client_register_or_login(NULL, "u", "p", &acc, &created)); NUL(qpq_client_register_or_login(c, NULL, "p", &acc, &created));
    NUL(qpq_client_register_or_login(c, "u", NULL, &acc, &created)); NUL(qpq_client_register_or_login(c, "u", "p", NULL, &created));
    NUL(qpq_client_register_or_login(c, "u", "p", &acc, NULL));
    NUL(qpq_client_logout(NULL)); NUL(qpq_client_account(NULL, &acc)); NUL(qpq_client_account(c, NULL));
    NUL(qpq_client_resolve_user(NULL, "u", &mem)); NUL(qpq_client_resolve_user(c, NULL, &mem)); NUL(qpq_client_resolve_user(c, "u", NULL));
    NUL(qpq_client_create_group(NULL, "n", true, &id)); NUL(qpq_client_create_group(c, NULL, true, &id)); NUL(qpq_client_create_group(c, "n", true, NULL));
    NUL(qpq_client_create_dm(NULL, "u", &id)); NUL(qpq_client_create_dm(c, NULL, &id)); NUL(qpq_client_create_dm(c, "u", NULL));
    NUL(qpq_client_invite(NULL, g, names, 1)); NUL(qpq_client_invite(c, NULL, names, 1));
    NUL(qpq_client_invite(c, g, NULL, 1)); NUL(qpq_client_invite(c, g, null_names, 1));
    NUL(qpq_client_remove(NULL, g, "u")); NUL(qpq_client_remove(c, NULL, "u")); NUL(qpq_client_remove(c, g, NULL));
    NUL(qpq_client_leave(NULL, g)); NUL(qpq_client_leave(c, NULL));
    NUL(qpq_client_promote(NULL, g, "u")); NUL(qpq_client_promote(c, NULL, "u")); NUL(qpq_client_promote(c, g, NULL));
    NUL(qpq_client_rotate_keys(NULL, g)); NUL(qpq_client_rotate_keys(c, NULL));
    NUL(qpq_client_accept(NULL, g)); NUL(qpq_client_accept(c, NULL));
    NUL(qpq_client_decline(NULL, g, false)); NUL(qpq_client_decline(c, NULL, true));
    NUL(qpq_client_block(NULL, "u")); NUL(qpq_client_block(c, NULL));
    NUL(qpq_client_unblock(NULL, "u")); NUL(qpq_client_unblock(c, NULL));
    NUL(qpq_client_blocked(NULL, &sl)); NUL(qpq_client_blocked(c, NULL));
    NUL(qpq_client_send(NULL, g, body, &mid)); NUL(qpq_client_send(c, NULL, body, &mid));
    NUL(qpq_client_send(c, g, NULL, &mid)); NUL(qpq_client_send(c, g, body, NULL));
    NUL(qpq_client_send_with_id(NULL, g, &mid, body, &mid)); NUL(qpq_client_send_with_id(c, NULL, &mid, body, &mid));
    NUL(qpq_client_send_with_id(c, g, NULL, body, &mid)); NUL(qpq_client_send_with_id(c, g, &mid, NULL, &mid));
    NUL(qpq_client_send_with_id(c, g, &mid, body, NULL));
    NUL(qpq_client_send_text(NULL, g, "t", &mid)); NUL(qpq_client_send_text(c, NULL, "t", &mid));
    NUL(qpq_client_send_text(c, g, NULL, &mid)); NUL(qpq_client_send_text(c, g, "t", NULL));
    NUL(qpq_client_conversations(NULL, &cl)); NUL(qpq_client_conversations(c, NULL));
    NUL(qpq_client_conversation(NULL, g, &conv)); NUL(qpq_client_conversation(c, NULL, &conv)); NUL(qpq_client_conversation(c, g, NULL));
    OK(qpq_client_conversation(c, g, &conv));
    NUL(qpq_client_display_name(NULL, conv, &s)); NUL(qpq_client_display_name(c, NULL, &s)); NUL(qpq_client_display_name(c, conv, NULL));
    qpq_conversation_free(conv);
    NUL(qpq_client_find_conversation(NULL, "x", &conv)); NUL(qpq_client_find_conversation(c, NULL, &conv)); NUL(qpq_client_find_conversation(c, "x", NULL));
    NUL(qpq_client_messages(NULL, g, 1, 0, &ml)); NUL(qpq_client_messages(c, NULL, 1, 0, &ml)); NUL(qpq_client_messages(c, g, 1, 0, NULL));
    NUL(qpq_client_members(NULL, g, &mbl)); NUL(qpq_client_members(c, NULL, &mbl)); NUL(qpq_client_members(c, g, NULL));
    NUL(qpq_client_safety_number(NULL, "u", &s)); NUL(qpq_client_safety_number(c, NULL, &s)); NUL(qpq_client_safety_number(c, "u", NULL));
    NUL(qpq_client_sync(NULL, &el)); NUL(qpq_client_sync(c, NULL));
    NUL(qpq_client_next_event(NULL, 0, &ev)); NUL(qpq_client_next_event(c, 0, NULL));
    NUL(qpq_client_wait_event_after(NULL, 0, 0, &ev)); NUL(qpq_client_wait_event_after(c, 0, 0, NULL));
    NUL(qpq_client_event_cursor(NULL, &u)); NUL(qpq_client_event_cursor(c, NULL));
    NUL(qpq_client_interrupt(NULL)); NUL(qpq_client_ping(NULL, &u)); NUL(qpq_client_ping(c, NULL));
    NUL(qpq_conversation_id_to_hex(NULL, &s)); NUL(qpq_conversation_id_to_hex(g, NULL));
    NUL(qpq_conversation_id_from_hex(NULL, &id)); NUL(qpq_conversation_id_from_hex("00", NULL));
    NUL(qpq_message_id_to_hex(NULL, &s)); NUL(qpq_message_id_to_hex(&mid, NULL));
    NUL(qpq_message_id_from_hex(NULL, &mid)); NUL(qpq_message_id_from_hex("00", NULL));
    NUL(qpq_body_new_text(NULL, &b)); NUL(qpq_body_new_text("t", NULL));
    NUL(qpq_body_new_app(NULL, key, 1, &b)); NUL(qpq_body_new_app("a/b", NULL, 1, &b)); NUL(qpq_body_new_app("a/b", key, 1, NULL));
    NUL(qpq_body_new_reply(NULL, "t", &b)); NUL(qpq_body_new_reply(&mid, NULL, &b)); NUL(qpq_body_new_reply(&mid, "t", NULL));
    NUL(qpq_body_new_reaction(NULL, "e", false, &b)); NUL(qpq_body_new_reaction(&mid, NULL, false, &b)); NUL(qpq_body_new_reaction(&mid, "e", false, NULL));
    NUL(qpq_body_new_edit(NULL, "t", &b)); NUL(qpq_body_new_edit(&mid, NULL, &b)); NUL(qpq_body_new_edit(&mid, "t", NULL));
    NUL(qpq_body_new_delete(NULL, &b)); NUL(qpq_body_new_delete(&mid, NULL));
    NUL(qpq_body_new_file(NULL, "m", 1, key, 32, key, 32, &b)); NUL(qpq_body_new_file("n", NULL, 1, key, 32, key, 32, &b));
    NUL(qpq_body_new_file("n", "m", 1, NULL, 32, key, 32, &b)); NUL(qpq_body_new_file("n", "m", 1, key, 32, NULL, 32, &b));
    NUL(qpq_body_new_file("n", "m", 1, key, 32, key, 32, NULL));
    /* Nothing was handed out by the failing calls. */
    TRUE(cfg_out == NULL && client_out == NULL && acc == NULL && mem == NULL && b == NULL && cl == NULL && conv == NULL);
    TRUE(ml == NULL && mbl == NULL && el == NULL && ev == NULL && s == NULL && sl == NULL);
    /* A reserved kind is refused by send, a received-only shape is still readable. */
    OK(qpq_body_new_reaction(&mid, "+1", true, &b));
    TRUE(qpq_body_get_kind(b) == QPQ_BODY_REACTION && qpq_body_removed(b) && strcmp(qpq_body_emoji(b), "+1") == 0);
    EXPECT(QPQ_ERROR_INVALID_INPUT, qpq_client_send(c, g, b, &mid));
    qpq_body_free(b);
    qpq_body_free(body);
    qpq_config_free(cfg);
}

struct waiter {
    qpq_client *client;
    qpq_code code;
    volatile int done;
};

/* Pulls events until an error ends the wait. */
static void *wait_thread(void *arg) {
    struct waiter *w = arg;
    for (;;) {
        qpq_event *event = NULL;
        qpq_error *err = qpq_client_next_event(w->client, 30000, &event);
        qpq_event_free(event);
        if (err != NULL) {
            w->code = qpq_error_code(err);
            qpq_error_free(err);
            break;
        }
    }
    w->done = 1;
    return NULL;
}

/* A wait blocked in another thread ends with `want` after `stop` (repeated until it does,
 * since an interrupt only reaches waits already started), promptly. */
static void blocked_wait_ends(qpq_client *c, qpq_code want, int close) {
    struct waiter w = {c, QPQ_OK, 0};
    pthread_t t;
    pthread_create(&t, NULL, wait_thread, &w);
    struct timespec pause = {0, 100 * 1000 * 1000};
    nanosleep(&pause, NULL);
    double start = now_s();
    while (!w.done && now_s() - start < 5) {
        if (close) qpq_client_close(c); else OK(qpq_client_interrupt(c));
        struct timespec tick = {0, 20 * 1000 * 1000};
        nanosleep(&tick, NULL);
    }
    pthread_join(t, NULL);
    TRUE(w.code == want);
    TRUE(now_s() - start < 2.0);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s SERVER_ADDR CERT_DER_FILE WORK_DIR\n", argv[0]);
        return 2;
    }
    server = argv[1], cert = argv[2], work = argv[3];
    TRUE(qpq_abi_version() == QPQ_ABI_VERSION);
    TRUE(strcmp(qpq_error_code_name(QPQ_ERROR_UNAUTHORIZED), "Unauthorized") == 0 && qpq_error_code_name(0) == NULL && qpq_error_code_name(999) == NULL);
    accessors_take_null();

    qpq_client *dora = user("dora");
    qpq_client *erin = user("erin");
    qpq_conversation_id group;
    OK(qpq_client_create_group(dora, "errors", false, &group));
    const char *erin_name[] = {"erin"};
    OK(qpq_client_invite(dora, &group, erin_name, 1));

    /* Wrong password, unknown user. */
    qpq_client *other = open_client("other");
    qpq_account *account = NULL;
    EXPECT(QPQ_ERROR_UNAUTHORIZED, qpq_client_login(other, "dora", "not the password", &account));
    EXPECT(QPQ_ERROR_UNAUTHORIZED, qpq_client_login(other, "nobody-such-user", "whatever", &account));
    TRUE(account == NULL);
    OK(qpq_client_account(other, &account));
    TRUE(account == NULL); /* nothing was created */
    qpq_client_free(other);
    const char *nobody[] = {"nobody-such-user"};
    EXPECT(QPQ_ERROR_NOT_FOUND, qpq_client_invite(dora, &group, nobody, 1));
    qpq_member *member = NULL;
    EXPECT(QPQ_ERROR_NOT_FOUND, qpq_client_resolve_user(dora, "nobody-such-user", &member));
    qpq_conversation_id unknown = {{1, 2, 3}};
    qpq_message_id id;
    EXPECT(QPQ_ERROR_NOT_FOUND, qpq_client_send_text(dora, &unknown, "to nowhere", &id));
    EXPECT(QPQ_ERROR_ALREADY_MEMBER, qpq_client_invite(dora, &group, erin_name, 1));
    OK(qpq_client_send_text(dora, &group, "still working", &id)); /* the client keeps working */

    /* Consent and blocking (ABI 0.2): a stranger's invitation arrives as a request, accept
     * allows it; block lists the name until unblock; unknown names and ids are NOT_FOUND. */
    qpq_conversation *joined = NULL;
    for (double start = now_s(); joined == NULL && now_s() - start < 10;) {
        qpq_event_list *events = NULL;
        OK(qpq_client_sync(erin, &events));
        qpq_event_list_free(events);
        qpq_error *err = qpq_client_conversation(erin, &group, &joined);
        qpq_error_free(err);
    }
    TRUE(joined != NULL && qpq_conversation_consent(joined) == QPQ_CONSENT_REQUESTED);
    TRUE(joined != NULL && qpq_conversation_invited_by(joined) != NULL && strcmp(qpq_conversation_invited_by(joined), "dora") == 0);
    qpq_conversation_free(joined);
    joined = NULL;
    OK(qpq_client_accept(erin, &group));
    OK(qpq_client_conversation(erin, &group, &joined));
    TRUE(qpq_conversation_consent(joined) == QPQ_CONSENT_ALLOWED);
    qpq_conversation_free(joined);
    EXPECT(QPQ_ERROR_NOT_FOUND, qpq_client_accept(erin, &unknown));
    EXPECT(QPQ_ERROR_NOT_FOUND, qpq_client_block(erin, "nobody-such-user"));
    OK(qpq_client_block(erin, "dora"));
    qpq_string_list *blocked = NULL;
    OK(qpq_client_blocked(erin, &blocked));
    TRUE(qpq_string_list_len(blocked) == 1 && strcmp(qpq_string_list_get(blocked, 0), "dora") == 0 && qpq_string_list_get(blocked, 1) == NULL);
    qpq_string_list_free(blocked);
    OK(qpq_client_unblock(erin, "dora"));
    OK(qpq_client_blocked(erin, &blocked));
    TRUE(qpq_string_list_len(blocked) == 0);
    qpq_string_list_free(blocked);

    /* Ids in their stable text form: round trip, malformed text refused. */
    char *hex = NULL;
    qpq_conversation_id parsed;
    OK(qpq_conversation_id_to_hex(&group, &hex));
    TRUE(hex != NULL && strlen(hex) == 32);
    OK(qpq_conversation_id_from_hex(hex, &parsed));
    TRUE(memcmp(parsed.bytes, group.bytes, 16) == 0);
    qpq_string_free(hex);
    EXPECT(QPQ_ERROR_INVALID_INPUT, qpq_conversation_id_from_hex("not hex", &parsed));
    OK(qpq_message_id_to_hex(&id, &hex));
    qpq_message_id parsed_id;
    OK(qpq_message_id_from_hex(hex, &parsed_id));
    TRUE(memcmp(parsed_id.bytes, id.bytes, 16) == 0);
    qpq_string_free(hex);
    EXPECT(QPQ_ERROR_INVALID_INPUT, qpq_message_id_from_hex("abcd", &parsed_id));

    null_arguments(dora, &group);

    /* Interrupt, then close, a blocked wait from another thread. */
    blocked_wait_ends(erin, QPQ_ERROR_CANCELLED, 0);
    qpq_event *event = NULL;
    OK(qpq_client_next_event(erin, 0, &event)); /* still usable after an interrupt */
    qpq_event_free(event);
    blocked_wait_ends(erin, QPQ_ERROR_CLOSED, 1);
    EXPECT(QPQ_ERROR_CLOSED, qpq_client_send_text(erin, &group, "after close", &id));
    qpq_client_close(erin); /* idempotent */
    qpq_client_free(erin);
    qpq_client_free(dora);

    printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
