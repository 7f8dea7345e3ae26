// A .NET reader and writer of event payloads for esctl's tests, with the real Newtonsoft.Json.
// Compiled by tests/test_dotnet_reader.py (mcs -r:Newtonsoft.Json.dll); run with mono.
//
//   EventReader.exe samples   one payload per line, serialised as the library's event stores do
//                             (JsonConvert.SerializeObject(@event, TypeNameHandling.All))
//   EventReader.exe refs      one object graph per line, serialised with TypeNameHandling.All and
//                             PreserveReferencesHandling.All ($id, $ref, $values all written)
//   EventReader.exe backward-refs   the same, graphs whose every $ref comes after the $id it
//                             names in jsonb's key order too
//   EventReader.exe read      stdin lines "MODE<TAB>TYPE<TAB>JSON"; for each an output line
//                             "ok<TAB>CANONICAL" or "error<TAB>EXCEPTION: MESSAGE"
//
// MODE "subscriber" reads as the library's queue subscribers do (RedisEventSubscriber,
// RetryableRedisSubscription: JsonConvert.DeserializeObject<T>(eventData), default settings);
// MODE "refs" with TypeNameHandling.All + PreserveReferencesHandling.All; MODE "store" as the
// Redis event store reads (DeserializeObject<IEvent>(text, TypeNameHandling.All)). TYPE is the
// class name (T), or "object" to let $type decide; CANONICAL is what was read, serialised again with every type name (the test
// compares them ignoring the order of keys: jsonb does not keep a dictionary's key order).

using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text;
using Newtonsoft.Json;

namespace Learning.EsctlTests.Events
{
    public interface IEvent
    {
        string Id { get; set; }
        DateTimeOffset TimeStamp { get; set; }
        int Version { get; set; }
        string AggregateType { get; set; }
    }

    public class Address
    {
        public string Zip { get; set; }
        public string City { get; set; }
        public string Street { get; set; }
    }

    public class Line
    {
        public string Sku { get; set; }
        public int Qty { get; set; }
        public decimal Price { get; set; }
        public string Note { get; set; }
    }

    public class ScoresRecorded : IEvent
    {
        public string Id { get; set; }
        public DateTimeOffset TimeStamp { get; set; }
        public int Version { get; set; }
        public string AggregateType { get; set; }
        public Dictionary<string, decimal> Scores { get; set; }
        public string Rater { get; set; }
    }

    public class DetailsAttached : IEvent
    {
        public string Id { get; set; }
        public DateTimeOffset TimeStamp { get; set; }
        public int Version { get; set; }
        public string AggregateType { get; set; }
        public object Details { get; set; }
        public object Extra { get; set; }
        public object Blob { get; set; }
        public Dictionary<string, object> Bag { get; set; }
    }

    public class LinesAdded : IEvent
    {
        public string Id { get; set; }
        public DateTimeOffset TimeStamp { get; set; }
        public int Version { get; set; }
        public string AggregateType { get; set; }
        public List<Line> Lines { get; set; }
        public Address Ship { get; set; }
        public string Memo { get; set; }
    }

    public class Node
    {
        public string Name { get; set; }
        public Node Next { get; set; }
        public List<Node> Kids { get; set; }
        public Dictionary<string, Node> Map { get; set; }
    }

    // members declared in the order jsonb sorts them (shorter names first): a reference
    // written after the object it names stays after it in jsonb's order too
    public class Pair
    {
        public Node A { get; set; }
        public Node Bb { get; set; }
        public List<Node> Ccc { get; set; }
    }

    public static class Program
    {
        static readonly JsonSerializerSettings Library = new JsonSerializerSettings
        {
            TypeNameHandling = TypeNameHandling.All
        };

        static readonly JsonSerializerSettings References = new JsonSerializerSettings
        {
            TypeNameHandling = TypeNameHandling.All,
            PreserveReferencesHandling = PreserveReferencesHandling.All
        };

        public static int Main(string[] args)
        {
            var output = new StreamWriter(Console.OpenStandardOutput(), new UTF8Encoding(false));
            output.NewLine = "\n";
            var command = args.Length > 0 ? args[0] : "";
            if (command == "samples")
            {
                foreach (var @event in Samples())
                {
                    output.WriteLine(JsonConvert.SerializeObject(@event, Library));
                }
            }
            else if (command == "refs" || command == "backward-refs")
            {
                foreach (var graph in command == "refs" ? Graphs() : BackwardGraphs())
                {
                    output.WriteLine(JsonConvert.SerializeObject(graph, References));
                }
            }
            else if (command == "read")
            {
                var input = new StreamReader(Console.OpenStandardInput(), new UTF8Encoding(false));
                string line;
                while ((line = input.ReadLine()) != null)
                {
                    output.WriteLine(Read(line));
                    output.Flush();
                }
            }
            else
            {
                Console.Error.WriteLine("usage: EventReader.exe samples|refs|read");
                return 2;
            }
            output.Flush();
            return 0;
        }

        static string Read(string line)
        {
            var fields = line.Split(new[] { '\t' }, 3);
            if (fields.Length != 3)
            {
                return "error\tusage: MODE<TAB>TYPE<TAB>JSON";
            }
            var type = fields[1] == "object"
                ? typeof(object)
                : typeof(Program).Assembly.GetType("Learning.EsctlTests.Events." + fields[1]);
            if (type == null)
            {
                return "error\tno class " + fields[1];
            }
            try
            {
                object read;
                if (fields[0] == "subscriber")
                {
                    // what JsonConvert.DeserializeObject<T>(eventData) does: no settings at all
                    read = JsonConvert.DeserializeObject(fields[2], type);
                }
                else if (fields[0] == "refs")
                {
                    read = JsonConvert.DeserializeObject(fields[2], type, References);
                }
                else if (fields[0] == "store")
                {
                    read = JsonConvert.DeserializeObject<IEvent>(fields[2], Library);
                }
                else
                {
                    return "error\tno mode " + fields[0];
                }
                return "ok\t" + Canonical(read);
            }
            catch (Exception e)
            {
                return "error\t" + e.GetType().Name + ": " + e.Message.Replace('\n', ' ').Replace('\r', ' ');
            }
        }

        static string Canonical(object read)
        {
            // every type name, and references for the cyclic graphs of "refs"
            return JsonConvert.SerializeObject(read, new JsonSerializerSettings
            {
                TypeNameHandling = TypeNameHandling.All,
                PreserveReferencesHandling = PreserveReferencesHandling.Objects
            });
        }

        static DateTimeOffset At(int day, int ticks, int offsetMinutes)
        {
            return new DateTimeOffset(2018, 7, day, 17, 4, 12, TimeSpan.FromMinutes(offsetMinutes))
                .AddTicks(ticks);
        }

        static IEnumerable<IEvent> Samples()
        {
            var longText = string.Concat(Enumerable.Repeat("Zoë says \"hi\" \\ 日本語 🎉 ", 80));
            for (var n = 1; n <= 6; n++)
            {
                var id = "agg-" + n;
                var type = n % 2 == 0 ? "Order" : "ItemScore";
                var version = 0;
                yield return new ScoresRecorded
                {
                    Id = id, TimeStamp = At(n, 1234567 + n, 0), Version = ++version, AggregateType = type,
                    Scores = new Dictionary<string, decimal>
                    {
                        { "math", 9.50m }, { "a", 1m }, { "Zz", -0.125m }, { "$", 2.0m },
                        { "languages and literature", 12345678901234567890.12345678m }
                    },
                    Rater = "Amélie"
                };
                yield return new DetailsAttached
                {
                    Id = id, TimeStamp = At(n, 7654321, n % 3 == 0 ? -300 : 120), Version = ++version,
                    AggregateType = type,
                    Details = new Address { Zip = "75001", City = "Paris", Street = "Rue \"du\" Bac" },
                    Extra = n % 2 == 0
                        ? (object)new List<string> { "x", "é", "{\"$type\": \"not a key\"}" }
                        : new Dictionary<string, int> { { "b", 2 }, { "ab", 1 } },
                    Blob = new byte[] { 0, 1, 2, 250 },
                    Bag = new Dictionary<string, object>
                    {
                        { "n", 1.10m }, { "line", new Line { Sku = "S-" + n, Qty = n, Price = 0.1m } },
                        { "when", At(1, 1, 60) }, { "list", new List<int> { 3, 1, 2 } }
                    }
                };
                yield return new LinesAdded
                {
                    Id = id, TimeStamp = At(n, 1, 0), Version = ++version, AggregateType = type,
                    Lines = new List<Line>
                    {
                        new Line { Sku = "BK-1", Qty = 2, Price = 9.90m, Note = "a" },
                        new Line { Sku = "BK-2", Qty = 1, Price = 10m, Note = n == 3 ? longText : "tab\there" }
                    },
                    Ship = new Address { Zip = "1000", City = "Zürich" },
                    Memo = n == 5 ? longText : null
                };
            }
        }

        static IEnumerable<object> Graphs()
        {
            var shared = new Node { Name = "shared" };
            var root = new Node
            {
                Name = "root",
                Next = shared,
                Kids = new List<Node> { shared, new Node { Name = "k", Next = shared } },
                Map = new Dictionary<string, Node> { { "s", shared }, { "x", new Node { Name = "x" } } }
            };
            shared.Next = root;  // a cycle: written as a $ref
            yield return root;
            yield return new List<Node> { shared, shared };
        }

        static IEnumerable<object> BackwardGraphs()
        {
            var shared = new Node { Name = "shared", Kids = new List<Node> { new Node { Name = "k" } } };
            yield return new Pair { A = shared, Bb = shared, Ccc = new List<Node> { shared } };
            yield return new List<Pair> { new Pair { A = shared }, new Pair { Bb = shared } };
        }
    }
}
