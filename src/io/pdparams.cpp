#include "io/pdparams.h"

#include <cstring>
#include <deque>
#include <limits>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/json_io.h"
#include "core/mmap_file.h"

namespace oar {
namespace {

// A real state dict needs ~15 objects per tensor; 13B Llama has ~400 tensors. This bounds memory on hostile input.
constexpr size_t kMaxObjects = size_t(1) << 20;
constexpr size_t kMaxNameBytes = 1024;  // GLOBAL's text lines

enum class Kind : uint8_t { None, Bool, Int, Float, Str, Bytes, Tuple, List, Dict, Global, DTypeObj, Array };

// The globals a state dict needs, each a data-only constructor.
enum class Callable : uint8_t { Reconstruct, NdArray, DTypeCtor, OrderedDict, CodecsEncode, EmptyBytes };

struct Obj {
  explicit Obj(Kind k = Kind::None) : kind(k) {}
  Kind kind;
  int64_t i = 0;               // Int, Bool; Global: the Callable; DTypeObj: the byte order character
  double f = 0;                // Float
  std::string_view text;       // Str, Bytes (views into the input or into owned text); DTypeObj: numpy's code
  std::vector<uint32_t> items;  // Tuple, List; Dict: key, value, key, value...
  DType dtype = DType::F32;    // Array
  Shape shape;                 // Array
  bool built = false;          // Array: BUILD gave it data
};

const char* kind_name(Kind k) {
  static const char* names[] = {"None", "bool", "int", "float", "str", "bytes", "tuple", "list", "dict", "global", "dtype", "array"};
  return names[size_t(k)];
}

struct AllowedGlobal {
  std::string_view module, name;
  Callable callable;
};
constexpr AllowedGlobal kAllowed[] = {
    {"numpy.core.multiarray", "_reconstruct", Callable::Reconstruct},
    {"numpy._core.multiarray", "_reconstruct", Callable::Reconstruct},
    {"numpy", "ndarray", Callable::NdArray},
    {"numpy", "dtype", Callable::DTypeCtor},
    {"collections", "OrderedDict", Callable::OrderedDict},
    {"_codecs", "encode", Callable::CodecsEncode},
    {"__builtin__", "bytes", Callable::EmptyBytes},  // protocol 2's b'' (an empty array's data)
    {"builtins", "bytes", Callable::EmptyBytes},
};

struct NumpyType {
  std::string_view code;
  DType dtype;
};
// uint16 is Paddle's bfloat16 (tensor.numpy() of a bfloat16 tensor); numpy has no bfloat16.
constexpr NumpyType kNumpyTypes[] = {{"f4", DType::F32}, {"f2", DType::F16}, {"u2", DType::BF16}, {"f8", DType::F64},
                                     {"i8", DType::I64}, {"i4", DType::I32}, {"i2", DType::I16}, {"i1", DType::I8},
                                     {"u1", DType::U8},  {"b1", DType::U8},  {"u4", DType::U32}, {"u8", DType::U64}};

// The unpickler: a stack machine over the opcodes a state dict uses. Objects live in one arena and refer to each
// other by index, so cycles (a list appended to itself) and deep nesting cost nothing to destroy.
class Unpickler {
 public:
  Unpickler(const uint8_t* data, size_t size, std::string where) : p_(data), n_(size), where_(std::move(where)) {
    objs_.reserve(64);
    for (Kind k : {Kind::None, Kind::Bool, Kind::Bool}) objs_.emplace_back(k);
    objs_[kTrue].i = 1;
  }
  uint32_t run();  // the index of the object STOP returns
  const Obj& obj(uint32_t i) const { return objs_[i]; }
  [[noreturn]] void bad(const std::string& what) const {
    fail(where_, "not a readable state-dict pickle (at byte " + std::to_string(op_pos_) + "): " + what);
  }

 private:
  static constexpr uint32_t kNone = 0, kFalse = 1, kTrue = 2;

  uint8_t byte() { return need(1)[0]; }
  uint64_t little(int bytes);
  std::string_view take(uint64_t bytes) {
    const uint8_t* s = need(bytes);
    return {reinterpret_cast<const char*>(s), size_t(bytes)};
  }
  const uint8_t* need(uint64_t bytes) {
    if (bytes > n_ - pos_) bad("a length of " + std::to_string(bytes) + " runs past the end of the file");
    const uint8_t* s = p_ + pos_;
    pos_ += size_t(bytes);
    return s;
  }
  std::string_view line();

  uint32_t add(Obj o) {
    if (objs_.size() >= kMaxObjects) bad("more than " + std::to_string(kMaxObjects) + " objects, not a state dict");
    objs_.push_back(std::move(o));
    return uint32_t(objs_.size() - 1);
  }
  uint32_t add_text(Kind k, std::string_view t) { Obj o{k}; o.text = t; return add(std::move(o)); }
  void push(uint32_t i) {
    if (stack_.size() >= kMaxObjects) bad("a stack deeper than " + std::to_string(kMaxObjects) + ", not a state dict");
    stack_.push_back(i);
  }
  void remember(uint64_t key, uint32_t i) {  // a real pickle memoizes each object once
    if (memo_.size() >= kMaxObjects) bad("more than " + std::to_string(kMaxObjects) + " memo entries, not a state dict");
    memo_[key] = i;
  }
  size_t base() const { return marks_.empty() ? 0 : marks_.back(); }
  uint32_t pop() {
    if (stack_.size() <= base()) bad("stack underflow");
    uint32_t i = stack_.back();
    stack_.pop_back();
    return i;
  }
  uint32_t top() {
    if (stack_.size() <= base()) bad("stack underflow");
    return stack_.back();
  }
  std::vector<uint32_t> pop_to_mark();
  Obj& expect(uint32_t i, Kind k, const char* for_what) {
    if (objs_[i].kind != k) bad(std::string(for_what) + " needs a " + kind_name(k) + ", got a " + kind_name(objs_[i].kind));
    return objs_[i];
  }

  bool constant(uint8_t op);
  bool container(uint8_t op);
  bool memo(uint8_t op);
  bool call(uint8_t op);
  uint32_t global(std::string_view module, std::string_view name);
  uint32_t reduce(uint32_t callable, uint32_t args);
  void build(uint32_t target, uint32_t state);
  void build_array(Obj& a, const Obj& state);
  std::string_view latin1_bytes(std::string_view utf8);

  const uint8_t* p_;
  size_t n_, pos_ = 0, op_pos_ = 0;
  std::string where_;
  std::vector<Obj> objs_;
  std::vector<uint32_t> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, uint32_t> memo_;
  std::deque<std::string> owned_;  // text made by _codecs.encode
  size_t owned_bytes_ = 0;
};

uint64_t Unpickler::little(int bytes) {
  const uint8_t* s = need(size_t(bytes));
  uint64_t v = 0;
  for (int k = bytes - 1; k >= 0; --k) v = (v << 8) | s[k];
  return v;
}

std::string_view Unpickler::line() {
  const size_t limit = std::min(n_ - pos_, kMaxNameBytes);
  const void* nl = std::memchr(p_ + pos_, '\n', limit);
  if (!nl) bad("a GLOBAL name without an end of line");
  std::string_view s = take(size_t(static_cast<const uint8_t*>(nl) - (p_ + pos_)));
  ++pos_;
  return s;
}

std::vector<uint32_t> Unpickler::pop_to_mark() {
  if (marks_.empty()) bad("no MARK before a list, tuple or dict");
  std::vector<uint32_t> items(stack_.begin() + ptrdiff_t(marks_.back()), stack_.end());
  stack_.resize(marks_.back());
  marks_.pop_back();
  return items;
}

// Numbers, strings, bytes, None and booleans.
bool Unpickler::constant(uint8_t op) {
  switch (op) {
    case 'N': push(kNone); return true;
    case 0x88: push(kTrue); return true;
    case 0x89: push(kFalse); return true;
    case 'J': { Obj o{Kind::Int}; o.i = int32_t(uint32_t(little(4))); push(add(std::move(o))); return true; }
    case 'K': { Obj o{Kind::Int}; o.i = byte(); push(add(std::move(o))); return true; }
    case 'M': { Obj o{Kind::Int}; o.i = int64_t(little(2)); push(add(std::move(o))); return true; }
    case 0x8a: {  // LONG1: n little-endian two's-complement bytes
      const int n = byte();
      if (n > 8) bad("an integer of " + std::to_string(n) + " bytes");
      uint64_t v = n ? little(n) : 0;
      if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t(0) << (8 * n);
      Obj o{Kind::Int};
      o.i = int64_t(v);
      push(add(std::move(o)));
      return true;
    }
    case 'G': {  // BINFLOAT: big-endian double
      uint64_t bits = 0;
      for (uint8_t b : std::string_view(take(8))) bits = (bits << 8) | b;
      Obj o{Kind::Float};
      std::memcpy(&o.f, &bits, 8);
      push(add(std::move(o)));
      return true;
    }
    case 0x8c: push(add_text(Kind::Str, take(byte()))); return true;
    case 'X': push(add_text(Kind::Str, take(little(4)))); return true;
    case 0x8d: push(add_text(Kind::Str, take(little(8)))); return true;
    case 'U': push(add_text(Kind::Str, take(byte()))); return true;      // SHORT_BINSTRING (protocol 2)
    case 'T': push(add_text(Kind::Str, take(little(4)))); return true;   // BINSTRING
    case 'C': push(add_text(Kind::Bytes, take(byte()))); return true;
    case 'B': push(add_text(Kind::Bytes, take(little(4)))); return true;
    case 0x8e: push(add_text(Kind::Bytes, take(little(8)))); return true;
    default: return false;
  }
}

// Tuples, lists, dicts and the stack's marks.
bool Unpickler::container(uint8_t op) {
  auto make = [&](Kind k, std::vector<uint32_t> items) {
    Obj o{k};
    o.items = std::move(items);
    push(add(std::move(o)));
  };
  switch (op) {
    case '(':
      if (marks_.size() >= kMaxObjects) bad("more than " + std::to_string(kMaxObjects) + " marks, not a state dict");
      marks_.push_back(stack_.size());
      return true;
    case '0':  // POP; an empty frame pops its mark, as Python's unpickler does
      if (stack_.size() > base()) stack_.pop_back();
      else if (!marks_.empty()) marks_.pop_back();
      else bad("stack underflow");
      return true;
    case '1': pop_to_mark(); return true;
    case '2': push(top()); return true;
    case ')': make(Kind::Tuple, {}); return true;
    case ']': make(Kind::List, {}); return true;
    case '}': make(Kind::Dict, {}); return true;
    case 0x85: { uint32_t a = pop(); make(Kind::Tuple, {a}); return true; }
    case 0x86: { uint32_t b = pop(), a = pop(); make(Kind::Tuple, {a, b}); return true; }
    case 0x87: { uint32_t c = pop(), b = pop(), a = pop(); make(Kind::Tuple, {a, b, c}); return true; }
    case 't': make(Kind::Tuple, pop_to_mark()); return true;
    case 'l': make(Kind::List, pop_to_mark()); return true;
    case 'd': case 'u': case 's': {
      std::vector<uint32_t> kv;
      if (op == 's') { uint32_t v = pop(), k = pop(); kv = {k, v}; }
      else kv = pop_to_mark();
      if (kv.size() % 2) bad("a dict with a key but no value");
      if (op == 'd') { make(Kind::Dict, std::move(kv)); return true; }
      Obj& d = expect(top(), Kind::Dict, "SETITEM");
      d.items.insert(d.items.end(), kv.begin(), kv.end());
      return true;
    }
    case 'a': case 'e': {
      std::vector<uint32_t> add_items = op == 'a' ? std::vector<uint32_t>{pop()} : pop_to_mark();
      Obj& l = expect(top(), Kind::List, "APPEND");
      l.items.insert(l.items.end(), add_items.begin(), add_items.end());
      return true;
    }
    default: return false;
  }
}

// The memo: objects stored by index for later reference (BINGET); a map, so a huge index costs nothing.
bool Unpickler::memo(uint8_t op) {
  auto get = [&](uint64_t key) {
    auto it = memo_.find(key);
    if (it == memo_.end()) bad("memo entry " + std::to_string(key) + " was never stored");
    push(it->second);
  };
  switch (op) {
    case 0x94: remember(memo_.size(), top()); return true;
    case 'q': { uint64_t k = byte(); remember(k, top()); return true; }
    case 'r': { uint64_t k = little(4); remember(k, top()); return true; }
    case 'h': get(byte()); return true;
    case 'j': get(little(4)); return true;
    default: return false;
  }
}

bool Unpickler::call(uint8_t op) {
  switch (op) {
    case 'c': { std::string_view module = line(), name = line(); push(global(module, name)); return true; }
    case 0x93: {
      uint32_t name = pop(), module = pop();
      push(global(expect(module, Kind::Str, "STACK_GLOBAL").text, expect(name, Kind::Str, "STACK_GLOBAL").text));
      return true;
    }
    case 'R': { uint32_t args = pop(), fn = pop(); push(reduce(fn, args)); return true; }
    case 'b': { uint32_t state = pop(); build(top(), state); return true; }
    default: return false;
  }
}

uint32_t Unpickler::global(std::string_view module, std::string_view name) {
  for (const AllowedGlobal& g : kAllowed)
    if (g.module == module && g.name == name) {
      Obj o{Kind::Global};
      o.i = int64_t(g.callable);
      return add(std::move(o));
    }
  bad("global " + in_quotes(std::string(module) + "." + std::string(name)) +
      " is not allowed: only numpy arrays, dicts, lists, strings and numbers are read, and nothing is executed");
}

uint32_t Unpickler::reduce(uint32_t fn, uint32_t args_index) {
  const Callable c = Callable(expect(fn, Kind::Global, "REDUCE").i);
  const std::vector<uint32_t> args = expect(args_index, Kind::Tuple, "REDUCE").items;
  auto arg = [&](size_t k, Kind kind) -> const Obj& {
    if (k >= args.size()) bad("a call with too few arguments");
    return expect(args[k], kind, "a constructor argument");
  };
  switch (c) {
    case Callable::Reconstruct:  // _reconstruct(ndarray, (0,), b'b'): an empty array for BUILD to fill
      if (Callable(arg(0, Kind::Global).i) != Callable::NdArray) bad("_reconstruct of something other than ndarray");
      return add(Obj{Kind::Array});
    case Callable::DTypeCtor: {  // dtype('f4', False, True)
      Obj o{Kind::DTypeObj};
      o.text = arg(0, Kind::Str).text;
      o.i = '=';
      return add(std::move(o));
    }
    case Callable::OrderedDict:
      if (!args.empty()) bad("OrderedDict with arguments");
      return add(Obj{Kind::Dict});
    case Callable::CodecsEncode:
      if (arg(1, Kind::Str).text != "latin1" && arg(1, Kind::Str).text != "latin-1") bad("_codecs.encode to a codec other than latin1");
      return add_text(Kind::Bytes, latin1_bytes(arg(0, Kind::Str).text));
    case Callable::EmptyBytes:
      if (!args.empty()) bad("bytes() with arguments");
      return add_text(Kind::Bytes, {});
    case Callable::NdArray: bad("ndarray called directly");
  }
  bad("an unknown call");
}

// Protocol 2 writes bytes as _codecs.encode(text, 'latin1'): each code point below 256 is one byte.
std::string_view Unpickler::latin1_bytes(std::string_view utf8) {
  owned_bytes_ += utf8.size();
  if (owned_bytes_ > n_) bad("more decoded bytes than the file holds");
  std::string out;
  out.reserve(utf8.size());
  for (size_t k = 0; k < utf8.size(); ++k) {
    const uint8_t b = uint8_t(utf8[k]);
    if (b < 0x80) out.push_back(char(b));
    else if ((b == 0xc2 || b == 0xc3) && k + 1 < utf8.size() && (uint8_t(utf8[k + 1]) & 0xc0) == 0x80)
      out.push_back(char(((b & 0x1f) << 6) | (uint8_t(utf8[++k]) & 0x3f)));
    else bad("latin1 text with a code point above 255");
  }
  owned_.push_back(std::move(out));
  return owned_.back();
}

void Unpickler::build(uint32_t target, uint32_t state_index) {
  Obj& t = objs_[target];
  const Obj& state = expect(state_index, Kind::Tuple, "BUILD");
  if (t.kind == Kind::DTypeObj) {  // (3, '<', None, None, None, -1, -1, 0)
    if (state.items.size() < 2) bad("a dtype state without a byte order");
    const std::string_view order = expect(state.items[1], Kind::Str, "a dtype's byte order").text;
    if (order.size() != 1) bad("a dtype byte order " + in_quotes(std::string(order)));
    t.i = order[0];
    return;
  }
  if (t.kind != Kind::Array || t.built) bad(std::string("BUILD on a ") + kind_name(t.kind) + " is not allowed");
  build_array(t, state);
}

// (version, shape, dtype, is_fortran, raw bytes); numpy also accepts the form without a version.
void Unpickler::build_array(Obj& a, const Obj& state) {
  const size_t off = state.items.size() == 5 ? 1 : 0;
  if (state.items.size() != 4 + off) bad("an array state of " + std::to_string(state.items.size()) + " items");
  const Obj& shape = expect(state.items[off], Kind::Tuple, "an array shape");
  const Obj& dt = expect(state.items[off + 1], Kind::DTypeObj, "an array dtype");
  const Obj& fortran = expect(state.items[off + 2], Kind::Bool, "an array order");
  const Obj& raw = objs_[state.items[off + 3]];
  if (raw.kind != Kind::Bytes) bad("array data that is a " + std::string(kind_name(raw.kind)));
  if (dt.i == '>' && dt.text.size() > 1 && dt.text[1] != '1') bad("a big-endian array (dtype " + in_quotes(std::string(dt.text)) + ")");
  const NumpyType* type = nullptr;
  for (const NumpyType& t : kNumpyTypes)
    if (t.code == dt.text) type = &t;
  if (!type) bad("an array of numpy dtype " + in_quotes(std::string(dt.text)) + " (read: f4 f2 u2 f8 i8 i4 i2 i1 u1 b1 u4 u8)");
  // As numpy: the product of the nonzero dimensions must fit, even when a zero makes the array empty.
  const uint64_t item = dtype_size(type->dtype), limit = uint64_t(std::numeric_limits<int64_t>::max()) / item;
  uint64_t numel = 1, nonzero = 1;
  for (uint32_t d : shape.items) {
    const Obj& dim = expect(d, Kind::Int, "an array dimension");
    if (dim.i < 0 || (dim.i > 0 && nonzero > limit / uint64_t(dim.i))) bad("an array dimension out of range");
    if (dim.i > 0) nonzero *= uint64_t(dim.i);
    numel *= uint64_t(dim.i);
    a.shape.push_back(dim.i);
  }
  if (fortran.i && shape.items.size() > 1) bad("a Fortran-ordered array");
  if (numel * item != raw.text.size())
    bad("an array of shape " + shape_str(a.shape) + " with " + std::to_string(raw.text.size()) + " data bytes");
  a.dtype = type->dtype;
  a.text = raw.text;
  a.built = true;
}

uint32_t Unpickler::run() {
  while (pos_ < n_) {
    op_pos_ = pos_;
    const uint8_t op = p_[pos_++];
    if (op == '.') return pop();
    if (op == 0x80) {  // PROTO
      const uint8_t v = byte();
      if (v < 2 || v > 5) bad("pickle protocol " + std::to_string(v));
      continue;
    }
    if (op == 0x95) { little(8); continue; }  // FRAME: a length hint; the frame's opcodes follow inline
    if (constant(op) || container(op) || memo(op) || call(op)) continue;
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02x", op);
    bad(std::string("opcode ") + hex + " is not read (it builds objects other than arrays and dicts, or is not a pickle)");
  }
  op_pos_ = pos_;
  bad("the file ends before the pickle's STOP (truncated?)");
}

Tensor to_tensor(const Obj& a, const uint8_t* base, size_t size, const std::shared_ptr<const MappedFile>& file) {
  const auto* data = reinterpret_cast<const uint8_t*>(a.text.data());
  const size_t item = dtype_size(a.dtype);
  const bool in_file = file && data >= base && data + a.text.size() <= base + size;
  if (in_file && reinterpret_cast<uintptr_t>(data) % item == 0)
    return Tensor::from_storage(Storage::view(file, size_t(data - file->data()), a.text.size()), a.shape, a.dtype);
  Tensor t = Tensor::empty(a.shape, a.dtype);
  if (!a.text.empty()) std::memcpy(t.raw(), data, a.text.size());
  return t;
}

}  // namespace

std::map<std::string, Tensor> parse_pickled_arrays(const uint8_t* data, size_t size, const std::string& where,
                                                   std::shared_ptr<const MappedFile> file) {
  Unpickler u(data, size, where);
  const Obj& root = u.obj(u.run());
  if (root.kind != Kind::Dict) u.bad(std::string("the pickle holds a ") + kind_name(root.kind) + ", not a dict of arrays");
  std::map<std::string, Tensor> out;
  size_t copied = 0;  // the memo could name one large array many times
  for (size_t k = 0; k + 1 < root.items.size(); k += 2) {
    const Obj& key = u.obj(root.items[k]);
    const Obj* value = &u.obj(root.items[k + 1]);
    if (value->kind == Kind::Tuple && value->items.size() == 2 && u.obj(value->items[1]).kind == Kind::Array)
      value = &u.obj(value->items[1]);  // (name, array), as paddle.save of a Tensor writes it
    if (value->kind != Kind::Array) continue;
    if (key.kind != Kind::Str) u.bad("an array under a key that is a " + std::string(kind_name(key.kind)));
    if (!value->built) u.bad("array " + in_quotes(std::string(key.text)) + " has no data");
    copied += value->text.size();
    if (copied > size) u.bad("arrays share data: more array bytes than the file holds");
    if (!out.emplace(std::string(key.text), to_tensor(*value, data, size, file)).second)
      u.bad("array " + in_quotes(std::string(key.text)) + " appears twice");
  }
  if (out.empty()) fail(where, "no arrays in this pickle: not a Paddle state dict");
  return out;
}

std::map<std::string, Tensor> load_pdparams(const std::string& path) {
  std::shared_ptr<const MappedFile> f = MappedFile::open(path);
  return parse_pickled_arrays(f->data(), f->size(), path, f);
}

namespace {
void append_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(char((v >> (8 * i)) & 0xff));
}
}  // namespace

std::string pickle_number_dict(const std::vector<std::pair<std::string, PickleNumber>>& items) {
  std::string out = "\x80\x02}(";  // PROTO 2, EMPTY_DICT, MARK
  for (const auto& [key, value] : items) {
    out.push_back('X');  // BINUNICODE: 4-byte length, UTF-8
    append_le(out, key.size(), 4);
    out += key;
    if (const int64_t* i = std::get_if<int64_t>(&value)) {
      out.push_back(char(0x8a));  // LONG1: 8 little-endian two's-complement bytes
      out.push_back(8);
      append_le(out, uint64_t(*i), 8);
    } else {
      uint64_t bits;
      const double d = std::get<double>(value);
      std::memcpy(&bits, &d, 8);
      out.push_back('G');  // BINFLOAT: big-endian
      for (int b = 7; b >= 0; --b) out.push_back(char((bits >> (8 * b)) & 0xff));
    }
  }
  out += "u.";  // SETITEMS, STOP
  return out;
}

}  // namespace oar
