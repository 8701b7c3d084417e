// libFuzzer target: arbitrary bytes as a chat template. Parsing must either succeed or throw
// jinja::TemplateError; a template that parses is rendered for a small conversation (with and without the
// generation prompt) under a small budget, and must then either succeed or throw TemplateError (any other
// exception, crash, sanitizer report, leak or hang is a bug). Errors are one non-empty line. The budget keeps
// every input fast, long chains (x|trim|trim|..., 1+1+...) included: run_fuzzer.sh gets -max_len=200000 for this
// target (CMakeLists.txt), enough for the 20,000-filter chains of the seed corpus.
//   seed corpus: fuzz/corpus/chat_template/
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "chat/chat_template.h"
#include "chat/jinja.h"

namespace {

void check_message(const char* what) {
  std::string_view m = what;
  if (m.empty() || m.find('\n') != std::string_view::npos) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace oar;
  std::string source(reinterpret_cast<const char*>(data), size);
  std::unique_ptr<ChatTemplate> t;
  try {
    t = std::make_unique<ChatTemplate>(source, "fuzz", "<s>", "</s>");
  } catch (const Error& e) {  // the parse error, prefixed with the template's origin
    check_message(e.what());
    return 0;
  }
  // A budget some 40 times smaller than the default: every render ends within milliseconds.
  jinja::RenderLimits limits;
  limits.max_steps = 100'000;
  limits.max_string_bytes = 1 << 20;
  limits.max_list_items = 10'000;
  t->set_render_limits(limits);
  const std::vector<ChatMessage> conversation = {
      {"system", "Be brief."}, {"user", "Hello, \"world\" \\ {{ x }}"}, {"assistant", "Hi!\n"}, {"user", "\xc3\xa9t\xc3\xa9"}};
  for (bool gen : {false, true}) {
    try {
      std::string text = t->render(conversation, gen);
      if (text.size() > limits.max_string_bytes) __builtin_trap();
    } catch (const jinja::TemplateError& e) {
      check_message(e.what());
    }
  }
  return 0;
}
